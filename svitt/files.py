"""Writing result files atomically and reading users' torch files safely.

A file is written to a unique temporary name in its directory, flushed to disk and renamed
over the target, so a killed job never leaves a truncated `checkpoint.pt`, `metrics.json` or
table that Snakemake would take for a finished one, and two writers never share a temp name.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from svitt.errors import DiskFullError, UnreadableFileError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it over `path`.

    A full disk (or quota) is a DiskFullError naming `path`: the user can free space and
    rerun, and the file `path` held before, if any, is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free / 2**20
            raise DiskFullError(
                f"{path}: cannot write it: {os.strerror(err.errno)} ({free:.0f} MiB free there "
                "now); the previous file, if any, is unchanged: free space and run the "
                "command again"
            ) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def torch_load(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file that is not a torch checkpoint (another
    pickle, a truncated copy) is an UnreadableFileError naming it and `what` was expected.
    torch's own message advises `weights_only=False`, which must never be done with a user's
    file, so it is not shown."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UnreadableFileError(
            f"{path}: not a {what} (or truncated): torch cannot read it ({type(err).__name__})"
        ) from None
