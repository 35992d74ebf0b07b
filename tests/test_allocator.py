import platform

import pytest

from svitt.engine.allocator import retain_freed_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_accepts_the_allocator_settings():
    assert retain_freed_memory() is True
