"""The errors a user can fix, and how a command ends on them.

Every error caused by the user's input (a config key, a data file, a table row, a checkpoint
path) derives from `UserError`; `svitt <command>` prints its message as one line
`svitt <command>: error: ...` and exits with status 2. Anything else is a bug and keeps its
traceback. Messages name the file, key, row or column and say what is allowed.

Exceptions cross process boundaries (validation workers, DataLoader workers), so each class
passes all of its constructor's arguments to `Exception.__init__`, or defines `__reduce__`:
pickle rebuilds an exception as `cls(*args)`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class UserError(Exception):
    """Bad input; the message says what was wrong and what to do."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or the config implies) does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output path already holds something else; the message says how to proceed."""


class UnreadableFileError(UserError, ValueError):
    """A file exists but is not in the expected format (or is truncated)."""


class DiskFullError(UserError, OSError):
    """A result file could not be written for lack of space (or quota); nothing was replaced."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM ended a command; `message` says what was kept and how to resume.

    A BaseException like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(signum, message)
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name}: {self.message}"


def one_line(err: BaseException) -> str:
    """The error's message on one line (continuation lines joined with '; ')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


@contextmanager
def _on_stop_signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM inside the block, the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and receives the signals)
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def raise_on_stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` where the program is, so that a command ends
    the way it ends on Ctrl-C (cleanup runs, the MLflow run ends KILLED) on SIGTERM too
    (`timeout`, `scancel`, Snakemake), where the default would kill it on the spot."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum, "interrupted; rerun the same command to continue")

    with _on_stop_signals(stop):
        yield


@dataclass
class StopRequest:
    """The signal that asked to stop, once one has; see `stop_requests`."""

    signum: int | None = None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Inside the block the first SIGINT/SIGTERM only records itself in the yielded request,
    for a loop to stop at its next consistent point (a training step boundary); a second one
    raises `Interrupted` at once."""
    request = StopRequest()

    def record(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:
            raise Interrupted(signum, "interrupted twice; rerun the same command to continue")
        request.signum = signum

    with _on_stop_signals(record):
        yield request
