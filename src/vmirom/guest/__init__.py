"""The reference VMI guest kernel: building it, booting it on QEMU, reading what it prints,
and inspecting its VMI call sites.  The kernel itself lives in guest/ (C + GNU as)."""

from .build import KERNEL_PATH, BuildError, build_kernel, kernel_path
from .console import JSON_PREFIX, parse_events

__all__ = ["KERNEL_PATH", "BuildError", "build_kernel", "kernel_path", "JSON_PREFIX", "parse_events"]
