"""Keep Python's garbage collector off the start-up of a job.

A job imports torch, MLflow (with SQLAlchemy and alembic) and, through `torch.optim`,
torch._dynamo: about half a million objects that live until the process exits. While they
are being created the collector keeps running full passes over all of them (1.2 s of CPU in
a CI-sized pre-training job), and at exit the interpreter runs more (another 1.3 s), each
finding nothing to free. Importing them inside `permanent_imports()` runs no collection and
then moves everything alive into the collector's permanent generation (`gc.freeze`), which
it never scans again; the objects are still freed by reference counting as usual.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def permanent_imports() -> Iterator[None]:
    """Run the block (the first import of a large library) without garbage collection, then
    freeze whatever is alive. The price: cyclic garbage alive at that moment is never
    collected, so use it only around imports, not around work."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def freeze_at_exit() -> None:
    """Skip the interpreter's final collections: once the exit handlers start, the outputs
    are written and closed and the MLflow run is ended, so nothing needs collecting."""
    atexit.register(gc.freeze)
