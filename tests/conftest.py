"""Shared pytest setup."""

# Import vmirom before any test module imports `unicorn`: vmirom chooses which libunicorn the
# binding loads (our patched build when it is built), and that choice must precede the import.
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import vmirom  # noqa: F401


@pytest.fixture(scope="module")
def unix_kernel() -> Path:
    """The reference kernel, built, with its initrd (skips when user space is not built)."""
    from vmirom.guest.build import BUILD_DIR, build_kernel

    path = build_kernel()
    if not (BUILD_DIR / "initrd.cpio").is_file():
        pytest.skip("no initrd (user space not built)")
    return path
