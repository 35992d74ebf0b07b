"""The C++ block-sparse attention kernel for the CPU (`csrc/block_sparse.cpp`), built on first use.

`torch.utils.cpp_extension` compiles it once per machine and checkout (about 20 s on 2 cores)
into `<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions>/svitt-<torch>-<python>/<name>-<hash
of the source>`; later processes load it in milliseconds. `make venv` builds it right after
installing, so jobs only load it. Concurrent first uses build it once: torch holds an OS-level
lock on the build directory, which the kernel releases if a builder is killed.

It calls the BLAS that torch ships (MKL) through `sgemm_`/`dgemm_`. Where it cannot be built
(no C++ compiler, no MKL in this torch), `svitt.models.attention` uses its PyTorch-op kernel
and says so once in the log; `SVITT_CPU_KERNEL=0` chooses that kernel outright.

`python -m svitt.models.cpu_kernel` builds it and says whether it is ready.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "block_sparse.cpp"
# -ffast-math lets gcc vectorise exp through glibc's libmvec; the kernel never feeds it an
# infinity (padded keys are skipped, not masked with -inf).
FLAGS = ["-O3", "-ffast-math", "-fopenmp"]
ISA_FLAGS = {"AVX2": ["-mavx2", "-mfma"], "AVX512": ["-mavx512f", "-mavx512bw", "-mfma"]}


def build_directory(name: str) -> Path:
    """One directory per torch and Python version, and per source file and its content: two
    checkouts on one machine (a CI clone beside a working tree) never rebuild each other's
    library while the other has it loaded."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    version = torch.__version__.replace("+", "_")
    source = hashlib.sha1(str(SOURCE.resolve()).encode() + SOURCE.read_bytes()).hexdigest()
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return Path(root) / f"svitt-{version}-{python}" / f"{name}-{source[:12]}"


@functools.cache
def available() -> bool:
    """Whether the C++ kernel is loaded (building it first if needed)."""
    if os.environ.get("SVITT_CPU_KERNEL", "1") == "0":
        return False
    # One build per instruction-set level, so a shared cache never serves the wrong one.
    isa = torch.backends.cpu.get_cpu_capability()
    name = f"svitt_block_sparse_{isa.lower()}"
    directory = build_directory(name)
    try:
        # Its import warns about CUDA_HOME on machines without CUDA: not our concern here.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils.cpp_extension import load

        # torch runs `ninja` from PATH; the ninja package puts it beside this interpreter.
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        directory.mkdir(parents=True, exist_ok=True)
        load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=FLAGS + ISA_FLAGS.get(isa, []),
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            is_python_module=False,
        )
    except Exception as error:  # no compiler or no BLAS symbols: the PyTorch-op kernel works
        first_line = str(error).splitlines()[0] if str(error) else ""
        log.warning(
            "C++ block-sparse kernel unavailable (%s: %s); using the PyTorch-op kernel",
            type(error).__name__,
            first_line,
        )
        return False
    return True


_switched_off = False


def enabled() -> bool:
    """Whether `svitt.models.attention` uses the C++ kernel for CPU float32/float64 inputs."""
    return not _switched_off and available()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Use the PyTorch-op kernel inside the block (benchmarks compare the two in one run)."""
    global _switched_off
    saved, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = saved


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ready = available()
    where = build_directory("").parent
    print(f"C++ block-sparse kernel: {'ready' if ready else 'NOT available'} (built under {where})")
