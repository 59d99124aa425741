"""The kernel build is reproducible across checkouts: "the same kernel file (same sha256)" must
hold for a user who builds it in another directory, so no absolute build path may end up in it
(the Makefile maps the source directory to "." with -ffile-prefix-map)."""

from __future__ import annotations

from vmirom.guest.build import GUEST_DIR, build_kernel


def test_kernel_holds_no_build_path() -> None:
    kernel = build_kernel()
    data = kernel.read_bytes()
    assert b"\x7fELF" == data[:4]
    for path in {GUEST_DIR, GUEST_DIR.parent}:
        assert str(path).encode() not in data, f"{kernel} names the checkout {path}"
