"""Constants and byte layouts of the VMI 3.0 ABI: header, PCI/PnP structures, flags."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

# --- versions and signatures
API_MAJOR = 3
API_MINOR = 1            # what our ROMs announce by default: 3.0 plus the extensions of minor 1
API_MINOR_REQUIRED = 0   # the lowest minor a guest accepts (Linux: 0)
VMI_SIGNATURE = 0x696D5663          # "cVmi" little-endian
OPTION_ROM_SIGNATURE = 0xAA55       # bytes 55 AA
PCI_VENDOR_VMWARE = 0x15AD
PCI_DEVICE_VMI = 0x0801
# PCI class code we publish: 0x05 memory controller / 0x80 other / interface 0.
# The historical sources give none; "other memory controller" describes a ROM of
# code with no registers better than any device class (docs/abi.md).
PCI_CLASS = 0x05
PCI_SUBCLASS = 0x80
PCI_INTERFACE = 0x00

ROM_SCAN_START = 0xC0000
ROM_SCAN_END = 0xE0000      # exclusive
ROM_SCAN_STEP = 2048
ROM_BLOCK = 512             # rom_length unit
ROM_MAX_BLOCKS = 255        # rom_length is one byte

GPL_LICENSES = ("GPL", "GPL v2")


class RelocType(IntEnum):
    """What get_reloc tells the guest to do with a call site."""

    NONE = 0       # keep the native instruction
    CALL_REL = 1   # call rel32 to the returned address
    JUMP_REL = 2   # jmp rel32 (non-returning calls only)
    NOP = 3        # remove the site


@dataclass(frozen=True)
class Field:
    """One field of a packed little-endian structure."""

    name: str
    offset: int
    size: int

    @property
    def fmt(self) -> str | None:
        return {1: "<B", 2: "<H", 4: "<I"}.get(self.size)

    def read(self, buf: bytes, base: int = 0) -> int:
        fmt = self.fmt
        if fmt is None:
            raise TypeError(f"{self.name} is a byte array; slice it")
        return struct.unpack_from(fmt, buf, base + self.offset)[0]

    def write(self, buf: bytearray, value: int, base: int = 0) -> None:
        fmt = self.fmt
        if fmt is None:
            raise TypeError(f"{self.name} is a byte array; slice it")
        struct.pack_into(fmt, buf, base + self.offset, value)


@dataclass(frozen=True)
class Layout:
    name: str
    size: int
    fields: tuple[Field, ...]

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


ROM_HEADER = Layout("vrom_header", 0x90, (
    Field("rom_signature", 0x00, 2),
    Field("rom_length", 0x02, 1),
    Field("rom_entry", 0x03, 4),
    Field("rom_pad0", 0x07, 1),
    Field("vrom_signature", 0x08, 4),
    Field("api_version_min", 0x0C, 1),
    Field("api_version_maj", 0x0D, 1),
    Field("jump_slots", 0x0E, 1),
    Field("reserved1", 0x0F, 1),
    Field("virtual_top", 0x10, 4),
    Field("reserved2", 0x14, 2),
    Field("license_offs", 0x16, 2),
    Field("pci_header_offs", 0x18, 2),
    Field("pnp_header_offs", 0x1A, 2),
    Field("rom_pad3", 0x1C, 4),
    Field("reserved", 0x20, 96),
    Field("vmi_init", 0x80, 8),
    Field("get_reloc", 0x88, 8),
))

PCI_HEADER = Layout("pci_header", 24, (
    Field("signature", 0, 4),
    Field("vendor_id", 4, 2),
    Field("device_id", 6, 2),
    Field("vpd_data", 8, 2),
    Field("size", 10, 2),
    Field("revision", 12, 1),
    Field("class_interface", 13, 1),   # PCI spec order: interface, subclass, class
    Field("class_subclass", 14, 1),
    Field("class_base", 15, 1),
    Field("chunks", 16, 2),
    Field("rom_version_min", 18, 1),
    Field("rom_version_maj", 19, 1),
    Field("code_type", 20, 1),
    Field("last_rom", 21, 1),
    Field("reserved", 22, 2),
))

PNP_HEADER = Layout("pnp_header", 32, (
    Field("signature", 0, 4),
    Field("revision", 4, 1),
    Field("length", 5, 1),        # in 16-byte units
    Field("next", 6, 2),
    Field("reserved", 8, 1),
    Field("checksum", 9, 1),
    Field("device_id", 10, 4),
    Field("manufacturer_offs", 14, 2),
    Field("product_offs", 16, 2),
))

# --- page-table flags (AllocatePage/ReleasePage and PTE updates)
PAGE_NORMAL = 0x00
PAGE_PT = 0x01
PAGE_PD = 0x02
PAGE_PDP = 0x04
PAGE_PML4 = 0x08
PAGE_PAE = 0x10          # Allocate/ReleasePage only
PAGE_CLONE = 0x20        # Allocate/ReleasePage only
PAGE_ZEROED = 0x40       # Allocate/ReleasePage only
PAGE_CURRENT_AS = 0x10   # PTE updates only
PAGE_DEFER = 0x20        # PTE updates only
PAGE_VA_MASK = 0xFFFFF000

# --- FlushTLB
FLUSH_TLB = 0x01
FLUSH_GLOBAL = 0x02

# --- time
CYCLE_COUNTER_REAL = 0
CYCLE_COUNTER_AVAILABLE = 1
CYCLE_COUNTER_STOLEN = 2
ALARM_COUNTERS = 2
ALARM_COUNTER_MASK = 0xFF
ALARM_PERIODIC = 0x100
ALARM_WIRED_IRQ0 = 0x00000
ALARM_WIRED_LVTT = 0x10000
WALLCLOCK_HZ = 1_000_000_000

# --- SetLazyMode
LAZY_NONE = 0
LAZY_MMU = 1
LAZY_CPU = 2

LINEAR_MAP_SLOTS = 4

# --- Reboot
REBOOT_SOFT = 0
REBOOT_HARD = 1

# --- GetInterruptMask
IF_MASK = 0x200

# Named constant groups for the C header, in output order.
CONSTANT_GROUPS: dict[str, dict[str, int]] = {
    "ROM discovery and versions": {
        "VMI_API_REV_MAJOR": API_MAJOR,
        "VMI_API_REV_MINOR": API_MINOR_REQUIRED,
        "VMI_API_REV_MINOR_CURRENT": API_MINOR,
        "VMI_SIGNATURE": VMI_SIGNATURE,
        "VMI_OPTION_ROM_SIGNATURE": OPTION_ROM_SIGNATURE,
        "VMI_PCI_VENDOR_VMWARE": PCI_VENDOR_VMWARE,
        "VMI_PCI_DEVICE_VMI": PCI_DEVICE_VMI,
        "VMI_ROM_SCAN_START": ROM_SCAN_START,
        "VMI_ROM_SCAN_END": ROM_SCAN_END,
        "VMI_ROM_SCAN_STEP": ROM_SCAN_STEP,
        "VMI_ROM_BLOCK": ROM_BLOCK,
    },
    "Relocation types (get_reloc)": {
        "VMI_RELOCATION_" + t.name: int(t) for t in RelocType
    },
    "Page flags": {
        "VMI_PAGE_NORMAL": PAGE_NORMAL, "VMI_PAGE_PT": PAGE_PT, "VMI_PAGE_PD": PAGE_PD,
        "VMI_PAGE_PDP": PAGE_PDP, "VMI_PAGE_PML4": PAGE_PML4, "VMI_PAGE_PAE": PAGE_PAE,
        "VMI_PAGE_CLONE": PAGE_CLONE, "VMI_PAGE_ZEROED": PAGE_ZEROED,
        "VMI_PAGE_CURRENT_AS": PAGE_CURRENT_AS, "VMI_PAGE_DEFER": PAGE_DEFER,
        "VMI_PAGE_VA_MASK": PAGE_VA_MASK,
    },
    "FlushTLB flags": {"VMI_FLUSH_TLB": FLUSH_TLB, "VMI_FLUSH_GLOBAL": FLUSH_GLOBAL},
    "Time": {
        "VMI_CYCLES_REAL": CYCLE_COUNTER_REAL, "VMI_CYCLES_AVAILABLE": CYCLE_COUNTER_AVAILABLE,
        "VMI_CYCLES_STOLEN": CYCLE_COUNTER_STOLEN, "VMI_ALARM_COUNTERS": ALARM_COUNTERS,
        "VMI_ALARM_COUNTER_MASK": ALARM_COUNTER_MASK, "VMI_ALARM_IS_PERIODIC": ALARM_PERIODIC,
        "VMI_ALARM_IS_ONESHOT": 0, "VMI_ALARM_WIRED_IRQ0": ALARM_WIRED_IRQ0,
        "VMI_ALARM_WIRED_LVTT": ALARM_WIRED_LVTT, "VMI_WALLCLOCK_HZ": WALLCLOCK_HZ,
    },
    "SetLazyMode": {"VMI_LAZY_NONE": LAZY_NONE, "VMI_LAZY_MMU": LAZY_MMU, "VMI_LAZY_CPU": LAZY_CPU},
    "Other": {
        "VMI_LINEAR_MAP_SLOTS": LINEAR_MAP_SLOTS, "VMI_REBOOT_SOFT": REBOOT_SOFT,
        "VMI_REBOOT_HARD": REBOOT_HARD, "VMI_IF_MASK": IF_MASK,
    },
}

# --- the reference kernel's call-site record (not part of VMI itself, but shared by
# the kernel, its header and `vmirom inspect`).  One record per inline call site, in
# the ELF section SITE_SECTION: the call number, the site length, the clobber mask
# (CLOBBER_BITS), a flags byte, and the site's linear address.
SITE_SECTION = ".vmi_sites"
SITE_RECORD = Layout("vmi_site", 8, (
    Field("call", 0, 1),
    Field("length", 1, 1),
    Field("clobbers", 2, 1),
    Field("flags", 3, 1),
    Field("address", 4, 4),
))
SITE_MIN_CALL_LENGTH = 5   # a site must hold `call rel32` / `jmp rel32` to be patched
