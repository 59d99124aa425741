"""The ABI is defined once: numbers match the historical 3.0 table, the header is fresh."""

import subprocess

import pytest

from vmirom import abi
from vmirom.abi import cheader


def test_committed_header_matches_generator():
    assert cheader.HEADER_PATH.read_text() == cheader.render(), \
        "guest/include/vmi_abi.h is stale: run `vmirom abi header`"


@pytest.mark.parametrize("number,name", [
    (0, "CPUID"), (3, "SetGDT"), (14, "UpdateKernelStack"), (17, "SetCR3"), (27, "RDTSC"),
    (29, "EnableInterrupts"), (33, "IRET"), (35, "Halt"), (38, "SetPxE"), (44, "AllocatePage"),
    (47, "FlushTLB"), (48, "SetLinearMapping"), (49, "INL"), (61, "SetIOPLMask"),
    (65, "IODelay"), (66, "GetCycleFrequency"), (68, "SetAlarm"), (72, "SetCallbacks"),
    (73, "SetLazyMode"),
])
def test_known_call_numbers(number, name):
    assert abi.call(number).name == name
    assert abi.call(name).number == number


def test_table_is_dense_and_extensions_bump_minor():
    assert [c.number for c in abi.CALLS] == list(range(abi.NUM_CALLS))
    assert abi.NUM_CALLS_3_0 == 74
    assert all(c.since_minor == 0 for c in abi.CALLS_3_0)
    assert all(1 <= c.since_minor <= abi.API_MINOR for c in abi.CALLS_EXTENSIONS)


def test_interrupt_calls_clobber_only_flags():
    for name in ("EnableInterrupts", "DisableInterrupts", "SetInterruptMask"):
        assert abi.call(name).clobber_mask == abi.CLOBBER_BITS["flags"]
    assert abi.call("GetInterruptMask").clobber_mask == abi.CLOBBER_BITS["flags"] | abi.CLOBBER_BITS["eax"]


def test_header_layout_is_contiguous_and_0x90():
    pos = 0
    for f in abi.ROM_HEADER.fields:
        assert f.offset == pos
        pos += f.size
    assert pos == abi.ROM_HEADER.size == 0x90
    assert abi.ROM_HEADER["vmi_init"].offset == 0x80
    assert abi.ROM_HEADER["get_reloc"].offset == 0x88


def test_header_compiles_for_i386_and_static_asserts_hold(tmp_path):
    src = tmp_path / "t.c"
    src.write_text('#include "vmi_abi.h"\nint x = VMI_CALL_SetLazyMode;\n')
    subprocess.run(["gcc", "-m32", "-ffreestanding", "-fsyntax-only",
                    f"-I{cheader.HEADER_PATH.parent}", str(src)], check=True)
