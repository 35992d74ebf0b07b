"""Start-up: heavy imports run without garbage collection and end frozen; the exit skips it."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from svitt.startup import permanent_imports


@pytest.fixture(autouse=True)
def restore_collector():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_permanent_imports_collects_nothing_inside_and_freezes_after() -> None:
    gc.unfreeze()
    with permanent_imports():
        assert not gc.isenabled()
        marker = [object()]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert not any(obj is marker for obj in gc.get_objects())  # out of the collector's sight


def test_permanent_imports_restores_the_collector_after_an_error() -> None:
    with pytest.raises(ImportError), permanent_imports():
        import svitt.no_such_module  # noqa: F401
    assert gc.isenabled()


def test_permanent_imports_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    with permanent_imports():
        pass
    assert not gc.isenabled()


def test_freeze_at_exit_freezes_before_the_earlier_exit_handlers() -> None:
    # Exit handlers run last-registered first: one registered before sees the frozen heap.
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "from svitt.startup import freeze_at_exit\n"
        "freeze_at_exit()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "frozen True"
