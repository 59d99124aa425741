"""VMI ROM images: build them from a RomSpec, read them, check them with the guest's rules."""

from .build import RomImage, build_rom
from .check import check_rom
from .reader import RomInfo, read_rom
from .spec import CallEntry, RomError, RomSpec

__all__ = ["CallEntry", "RomError", "RomImage", "RomInfo", "RomSpec", "build_rom", "check_rom", "read_rom"]
