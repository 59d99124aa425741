"""Shadow paging inside the machine, driven by synthetic exits on the fake engine (no guest code).

The harness of tests/test_vmm_dispatch.py (`Vm`: GDT, IDT, TSS and an identity-mapped page
table in guest RAM) with memory model "shadow": the guest's CR0/CR3 are given to the machine as
an emulated `mov` to CR would give them, the fake engine holds the real ones (CR3 = the shadow
root in the VMM-private pool) and the tests play the engine walking the *shadow* tables: they
poke the real CR2 of a #PF and read what the machine made of it - a hidden fill (nothing
delivered), a true fault (delivered with the guest's CR2), a trapped page-table store (emulated
by fullvirt), a fate.
"""

from __future__ import annotations

import struct

import pytest

from test_vmm_dispatch import (
    CR0,
    GDT,
    KCODE,
    KERNEL_ESP,
    MOV_LOAD,
    MOV_STORE,
    NOT_PRESENT,
    PD,
    PT,
    RAM,
    BatchedFakeEngine,
    CoreBatchedFakeEngine,
    CoreFakeEngine,
    FakeEngine,
    Ring1,
    Vm,
    handler,
    site,
)
from vmirom.engines import core as engine_core
from vmirom.guest.build import BUILD_DIR, build_kernel
from vmirom.guest.console import last_event, parse_events
from vmirom.hypervisors.fullvirt import FullVirt
from vmirom.hypervisors.vmi import Vmi
from vmirom.hypervisors.vmi2 import SH_BATCH, SH_COUNT, Vmi2
from vmirom.machine import Machine, MachineConfig
from vmirom.machine.faults import PF
from vmirom.machine.mmu.bits import CR0_PG, CR0_WP, RW, US, A, P

REP_STOSD = b"\xf3\xab"


@pytest.fixture(
    params=[FakeEngine, BatchedFakeEngine, CoreFakeEngine, CoreBatchedFakeEngine],
    ids=["generic", "batched", "generic-c", "batched-c"],
)
def engine_cls(request):
    """Both paths: the C flavours take the #PF exit through the compiled core's shadow MMU first
    (engines/core/mmu.c), the Python path when it declines, as its Unicorn hook does."""
    if request.param.core == "c" and not engine_core.available():
        pytest.skip(engine_core.LOAD_ERROR)
    return request.param


def shadow_vm(engine_cls) -> Vm:
    return Vm(FullVirt(), engine_cls, memory_model="shadow")


def shadow_leaf(vm: Vm, va: int) -> int:
    """The shadow entry the engine would use for `va` (0 when not present)."""
    mem = vm.m.memory.machine
    pde = struct.unpack_from("<I", mem, vm.eng.reg("cr3") + 4 * (va >> 22))[0]
    if not pde & P:
        return 0
    return struct.unpack_from("<I", mem, (pde & ~0xFFF) + 4 * ((va >> 12) & 0x3FF))[0]


def page_fault(vm: Vm, va: int, code: bytes = MOV_LOAD, **regs) -> None:
    vm.in_kernel(**regs)
    vm.code(KCODE, code)
    vm.eng.poke(cr2=va)  # the engine's (real) CR2
    vm.exit("on_interrupt", PF)


def test_the_guest_sees_its_own_control_registers_and_the_engine_the_shadow_root(engine_cls):
    vm = shadow_vm(engine_cls)
    offset = vm.m.memory.machine_offset
    assert offset > 0 and vm.m.mmu is not None
    assert vm.m.engine.reg("cr3") == PD and vm.m.engine.reg("cr0") == CR0
    real_cr3 = vm.eng.reg("cr3")
    assert real_cr3 < offset and real_cr3 == vm.m.mmu.root_ma  # in the VMM-private pool
    assert vm.eng.reg("cr0") & (CR0_PG | CR0_WP) == CR0_PG | CR0_WP
    assert vm.m.delivery.registers()[5:8] == (CR0, PD, 0)  # what delivery and the walker read


def test_a_hidden_fault_fills_the_shadow_and_delivers_nothing(engine_cls):
    vm = shadow_vm(engine_cls)
    page_fault(vm, 0x200010, ebx=0x200010)
    assert vm.eng.writes == [] and vm.r("eip") == KCODE  # the instruction simply runs again
    assert vm.detail == {"shadow:hidden_fault": 1} and vm.m.metrics.total == 1
    leaf = shadow_leaf(vm, 0x200010)
    assert leaf & ~0xFFF == vm.m.memory.machine_offset + 0x200000  # guest RAM at its machine frame
    assert leaf & (P | US) == P | US and not leaf & RW  # clean page: read-only until its first write
    assert struct.unpack_from("<I", vm.m.memory.ram, PT + 4 * 0x200)[0] & A  # the guest's A bit


def test_a_true_fault_is_delivered_with_the_guests_cr2_which_hidden_faults_do_not_change(engine_cls):
    vm = shadow_vm(engine_cls)
    page_fault(vm, NOT_PRESENT + 4, ebx=NOT_PRESENT + 4)
    assert vm.words(KERNEL_ESP - 16, 4) == (0, KCODE, 0x19, 0x202)  # error code 0: kernel read, P=0
    vm.assert_entered(PF, ring=1, esp=KERNEL_ESP - 16, if_set=False)
    assert vm.m.engine.reg("cr2") == NOT_PRESENT + 4
    page_fault(vm, 0x200040, ebx=0x200040)  # a hidden fault in the handler
    assert vm.detail == {"shadow:hidden_fault": 1}
    assert vm.m.engine.reg("cr2") == NOT_PRESENT + 4  # what `mov %cr2` / GetCR2 return


def test_the_compiled_core_fills_and_delivers_shadow_faults_as_the_python_path_does(engine_cls):
    """A hidden fault in a directory slot whose shadow table exists, and a true fault, are done in C
    on the C flavours (the first fault of a slot links its table: Python); the outcome is the same
    on every flavour: the shadow leaf, the guest's A/D bits, the frame, the guest's CR2, the counts."""
    vm = Vm(Ring1(), engine_cls, memory_model="shadow")
    page_fault(vm, 0x200010, ebx=0x200010)
    vm.assert_path(c=False)  # no shadow table at slot 0 yet
    page_fault(vm, 0x201010, ebx=0x201010)
    vm.assert_path(c=True)
    assert vm.detail == {"shadow:hidden_fault": 1} and vm.eng.writes == [] and vm.r("eip") == KCODE
    leaf = shadow_leaf(vm, 0x201010)
    assert leaf & ~0xFFF == vm.m.memory.machine_offset + 0x201000 and leaf & (P | RW | US) == P | US
    assert struct.unpack_from("<I", vm.m.memory.ram, PT + 4 * 0x201)[0] & (A | 0x40) == A
    page_fault(vm, 0x201010, MOV_STORE, ebx=0x201010, eax=7)  # the write: D, and writable now
    vm.assert_path(c=True)
    assert shadow_leaf(vm, 0x201010) & RW
    assert struct.unpack_from("<I", vm.m.memory.ram, PT + 4 * 0x201)[0] & 0x40
    page_fault(vm, NOT_PRESENT + 4, ebx=NOT_PRESENT + 4)  # a true fault: C only with the GDT in the shadow
    vm.assert_path(c=False)
    vm.m.engine.set_reg("ds", 0x21)  # a segment load by the VMM readies it (as a ring change does)
    page_fault(vm, NOT_PRESENT + 8, MOV_STORE, ebx=NOT_PRESENT + 8)
    vm.assert_path(c=True)
    assert vm.detail == {"exception:14": 1}
    assert vm.words(KERNEL_ESP - 16, 4) == (2, KCODE, 0x19, 0x202)  # error code: kernel write, P=0
    vm.assert_entered(PF, ring=1, esp=KERNEL_ESP - 16, if_set=False)
    assert vm.m.engine.reg("cr2") == NOT_PRESENT + 8 and vm.eng.reg("cr2") == NOT_PRESENT + 8
    assert vm.m.mmu.stats.hidden_faults == 4 and vm.m.mmu.stats.true_faults == 2  # 4: the GDT page too


def test_fullvirt_traps_and_emulates_a_store_to_a_page_table(engine_cls):
    vm = shadow_vm(engine_cls)
    page_fault(vm, 0x200000, ebx=0x200000)  # a walk through PT: it is a page table now
    assert PT >> 12 in vm.m.mmu.by_gfn and shadow_leaf(vm, 0x200000)
    entry, new = PT + 4 * 0x200, 0x201000 | P | RW | US
    regs = dict(ebx=entry, eax=new)
    page_fault(vm, entry, MOV_STORE, **regs)  # not mapped yet: filled read-only (protected)
    assert vm.detail == {"shadow:hidden_fault": 1}
    page_fault(vm, entry, MOV_STORE, **regs)  # the store itself
    vm.assert_path(c=True)  # emulated in the compiled core on the C flavours (mmu.c core_wp_store)
    assert vm.detail == {
        "shadow:wp_trap": 1,
        "mmu:emulated_pte_write": 1,
        "mmu:zap": 1,
    }
    assert vm.r("eip") == KCODE + 2  # stepped over
    assert struct.unpack_from("<I", vm.m.memory.ram, entry)[0] == new
    assert shadow_leaf(vm, 0x200000) == 0  # the old translation is gone from the shadow
    page_fault(vm, 0x200000, ebx=0x200000)
    assert shadow_leaf(vm, 0x200000) & ~0xFFF == vm.m.memory.machine_offset + 0x201000


def test_a_store_fullvirt_cannot_emulate_unshadows_the_frame_and_runs_again(engine_cls):
    vm = shadow_vm(engine_cls)
    page_fault(vm, 0x200000, ebx=0x200000)
    page_fault(vm, PT, REP_STOSD, edi=PT, ecx=1024, eax=0)
    page_fault(vm, PT, REP_STOSD, edi=PT, ecx=1024, eax=0)
    assert vm.detail == {"shadow:wp_trap": 1, "mmu:unshadow": 1}  # one exit
    assert vm.r("eip") == KCODE and PT >> 12 not in vm.m.mmu.by_gfn


def test_guest_tables_naming_memory_outside_ram_end_in_a_clean_fate(engine_cls):
    vm = shadow_vm(engine_cls)
    struct.pack_into("<I", vm.m.memory.ram, PT + 4 * 0x3FF, (RAM + 0x10000) | P | RW)
    page_fault(vm, 0x3FF000, ebx=0x3FF000)
    assert vm.m.fate == "bad_memory" and "outside RAM" in vm.m.message


def test_segment_loads_by_the_vmm_find_the_gdt_mapped(engine_cls):
    """The engine reads (and marks accessed) a descriptor when the VMM loads a segment register,
    outside guest execution where no #PF can be taken: the GDT must be in the shadow first."""
    vm = shadow_vm(engine_cls)
    assert not vm.m.mmu.shadow_writable(GDT, user=False)
    vm.m.engine.set_reg("ds", 0x21)
    assert vm.m.mmu.shadow_writable(GDT, user=False)


def test_the_run_summary_carries_the_shadow_mmu(engine_cls):
    vm = shadow_vm(engine_cls)
    page_fault(vm, 0x200000, ebx=0x200000)
    mmu = vm.m.metrics_dict()["mmu"]
    assert mmu["tracking"] == "wp" and mmu["hidden_faults"] == 1 and mmu["shadow_pages"] >= 2
    assert vm.m.metrics_dict()["total_exits"] == vm.m.metrics.total  # mmu events are not exits


# -- a real boot: a kernel that writes its page tables natively on a "pv" shadow MMU -------------------
class NativeMmuVmi(Vmi):
    """A VMI personality whose ROM keeps the MMU operations native (like a third-party ROM that
    leaves PTE writes alone): the kernel stores its entries, never announces its tables, and
    relies on invlpg / CR3 reloads, so every shadow table is resynced like a TLB."""

    name = "test-vmi-native-mmu"
    native_calls = Vmi.native_calls + ("SetPxE", "UpdatePxE", "InvalPage", "FlushTLB", "SetCR3", "GetCR3")
    nop_calls = Vmi.nop_calls + ("AllocatePage", "ReleasePage", "SetLazyMode")


def test_native_page_table_writes_on_shadow_paging_pass_the_selftest():
    kernel = build_kernel()
    initrd = BUILD_DIR / "initrd.cpio"
    m = Machine(NativeMmuVmi(), MachineConfig(timeout_s=600))
    m.load_kernel(kernel.read_bytes(), "init=selftest", [(initrd.read_bytes(), "initrd")])
    r = m.run()
    summary = last_event(parse_events(r.console), "selftest_summary")
    assert (r.fate, r.exit_status) == ("exit", 0), r.message
    assert summary["failed"] == 0 and summary["passed"] == summary["total"] >= 29
    mmu = m.mmu.summary()
    assert mmu["pv_updates"] == 0 and mmu["syncs"] > 0  # no call told us: the resyncs did it


# -- the descriptor guard (machine/dtguard.py): the live GDT protected whatever the mappings say ------
GDT_LIMIT = 11 * 8 - 1
OTHER = 0x7000  # a frame the kernel remaps its GDT's linear page to
CALL_GATE_HI = 0x0000EC00  # DPL 3, type C, present


def guarded_vm(engine_cls, personality=FullVirt) -> Vm:
    vm = Vm(personality(), engine_cls, memory_model="shadow")
    vm.m.engine.on_table = vm.m.dtguard.watch
    vm.m.engine.set_reg("gdtr", (GDT, GDT_LIMIT))  # the GDT goes live: validated and protected
    return vm


def access(vm: Vm, phys: int, sel: int) -> int:
    return vm.m.memory.ram[phys + (sel & ~7) + 5]


def test_a_live_gdt_is_validated_and_its_frame_protected(engine_cls):
    vm = guarded_vm(engine_cls)
    assert vm.m.mmu.protection(GDT >> 12) == "descriptors"
    assert access(vm, GDT, 0x08) == 0xBB and access(vm, GDT, 0x48) == 0xB3  # DPL 0 -> 1, Accessed
    assert access(vm, GDT, 0x38) == 0x89  # the TSS: available, DPL 0


def test_a_store_of_a_call_gate_into_the_live_gdt_faults_and_writes_nothing(engine_cls):
    vm = guarded_vm(engine_cls)
    slot = GDT + 0x50 + 4
    before = bytes(vm.m.memory.ram[GDT : GDT + 0x58])
    page_fault(vm, slot, MOV_STORE, ebx=slot, eax=CALL_GATE_HI)  # fills the page read-only
    page_fault(vm, slot, MOV_STORE, ebx=slot, eax=CALL_GATE_HI)  # the store traps
    assert vm.detail["shadow:desc_trap"] == 1 and vm.detail["mmu:desc_refused"] == 1
    assert bytes(vm.m.memory.ram[GDT : GDT + 0x58]) == before
    assert vm.words(KERNEL_ESP - 16, 4)[:2] == (0, KCODE)  # #GP(0) at the store itself


def test_a_store_of_a_ring0_code_segment_is_compressed_and_stepped_over(engine_cls):
    vm = guarded_vm(engine_cls)
    slot = GDT + 0x50 + 4
    page_fault(vm, slot, MOV_STORE, ebx=slot, eax=0x00CF9A00)
    page_fault(vm, slot, MOV_STORE, ebx=slot, eax=0x00CF9A00)
    assert vm.detail["shadow:desc_trap"] == 1 and vm.detail["mmu:desc_compressed"] == 1
    assert struct.unpack_from("<I", vm.m.memory.ram, slot)[0] == 0x00CFBB00
    assert vm.r("eip") == KCODE + 2


def test_a_remapped_gdt_page_is_validated_before_the_cpu_can_use_it(engine_cls):
    """The kernel points its GDT's linear page at another frame holding a call gate and a ring-0
    code segment (behind the VMM's back): the fill that maps it validates that frame first."""
    vm = guarded_vm(engine_cls)
    ram = vm.m.memory.ram
    ram[OTHER : OTHER + 0x58] = ram[GDT : GDT + 0x58]
    struct.pack_into("<II", ram, OTHER + 0x40, 0x00085000, CALL_GATE_HI)
    struct.pack_into("<II", ram, OTHER + 0x50, 0x0000FFFF, 0x00CF9A00)
    struct.pack_into("<I", ram, PT + 4 * (GDT >> 12), OTHER | P | RW)
    page_fault(vm, GDT + 0x40, ebx=GDT + 0x40)  # the CPU reads the GDT: a hidden fault
    assert vm.m.mmu.protection(OTHER >> 12) == "descriptors"
    assert not struct.unpack_from("<I", ram, OTHER + 0x44)[0] & 0x8000  # the gate made not present
    assert access(vm, OTHER, 0x50) == 0xBB
    assert shadow_leaf(vm, GDT) & ~0xFFF == vm.m.memory.machine_offset + OTHER
    assert not shadow_leaf(vm, GDT) & RW


def test_with_paging_off_the_identity_frame_of_the_gdt_is_validated(engine_cls):
    vm = shadow_vm(engine_cls)
    ram = vm.m.memory.ram
    struct.pack_into("<I", ram, PT + 4 * (GDT >> 12), OTHER | P | RW)  # paging on: GDT at OTHER
    ram[OTHER : OTHER + 0x58] = bytes(0x58)
    vm.m.engine.on_table = vm.m.dtguard.watch
    vm.m.engine.set_reg("gdtr", (GDT, GDT_LIMIT))
    assert access(vm, GDT, 0x08) == 0x9A  # frame 1 is not the GDT while paging maps it elsewhere
    vm.m.engine.set_reg("cr0", CR0 & ~CR0_PG)
    page_fault(vm, GDT + 8, ebx=GDT + 8)
    assert access(vm, GDT, 0x08) == 0xBB and vm.m.mmu.protection(GDT >> 12) == "descriptors"


@pytest.mark.parametrize("engine_cls", [FakeEngine, CoreFakeEngine], ids=["python", "c"])
def test_an_interrupt_frame_the_vmm_pushes_onto_the_gdt_page_is_validated(engine_cls):
    """The kernel's ring-1 stack ends inside its GDT: the frame delivery pushes for `int $0x80`
    from user mode (EIP, CS, EFLAGS, ESP, SS - the user's ESP chosen to read as a call gate's high
    dword) lands on a descriptor; the VMM's own write is revalidated before the guest runs again."""
    vm = guarded_vm(engine_cls, Vmi)
    struct.pack_into("<I", vm.m.memory.ram, 0x3000 + 12, GDT + 0x5C)  # TSS.esp1
    user_esp = 0x0010EC00  # a call gate's high dword: P, DPL 3, type C
    vm.in_user(eip=0x200002, esp=user_esp)
    vm.exit("on_interrupt", 0x80)
    vm.assert_path(c=False)  # the compiled core leaves a write into a protected frame to Python
    assert vm.words(GDT + 0x48, 3) == (0x200002, 0x2B, 0x202)  # the frame is there (EIP, CS, EFLAGS)
    assert vm.words(GDT + 0x54, 1) == (user_esp & ~0x8000,)  # pushed, then made not present
    assert vm.detail.get("mmu:desc_vmm_write", 0) >= 1


def test_a_cached_shadow_table_linked_under_the_gdt_brings_no_unchecked_leaf(engine_cls):
    """Shadow tables are shared by guest table frame: one already filled for another linear range
    (its leaf 1 maps a frame holding a call gate) gets linked under the GDT's 4 MiB by a fault
    elsewhere in that range.  The GDT's leaf in it must not come along unchecked."""
    vm = guarded_vm(engine_cls)
    ram = vm.m.memory.ram
    pt2 = 0x12000
    ram[OTHER : OTHER + 0x58] = ram[GDT : GDT + 0x58]
    struct.pack_into("<II", ram, OTHER + 0x40, 0x00085000, CALL_GATE_HI)
    for i in range(1024):
        struct.pack_into("<I", ram, pt2 + 4 * i, (i << 12) | P | RW | A)
    struct.pack_into("<I", ram, pt2 + 4 * 1, OTHER | P | RW | A)
    struct.pack_into("<I", ram, PD + 4, pt2 | P | RW | US)
    page_fault(vm, 0x401000, ebx=0x401000)  # PT2's shadow: leaf 1 -> OTHER, unvalidated (not the GDT)
    assert vm.m.mmu.protection(OTHER >> 12) is None
    struct.pack_into("<I", ram, PD, pt2 | P | RW | US)  # the GDT's 4 MiB now uses PT2 as well
    vm.m.engine.set_reg("cr3", PD)  # a CR3 reload: the directory entry is resynced
    page_fault(vm, 0x5000, ebx=0x5000)  # a fault elsewhere links PT2's cached shadow at index 0
    leaf = shadow_leaf(vm, GDT)
    assert leaf == 0 or vm.m.mmu.protection(OTHER >> 12) == "descriptors"
    page_fault(vm, GDT + 0x40, ebx=GDT + 0x40)  # the CPU's own read of the GDT fills it: checked
    assert vm.m.mmu.protection(OTHER >> 12) == "descriptors"
    assert not struct.unpack_from("<I", ram, OTHER + 0x44)[0] & 0x8000


# -- vmi2's batch flush (Vmi2.flush_batch, the compiled core's core_v2_flush) -------------------------
def _vmi2_batch(engine_cls, case: str) -> tuple[Vm, dict]:
    """A vmi2 machine on shadow paging whose page table at PT has shadows (hidden faults through it),
    then entries the "guest" rewrote in place and logged in the shared page (as the ROM's lazy
    SetPxE does), then the flush exit `case` names.  Returns the VM and what both paths must agree on."""
    vm = Vm(Vmi2(), engine_cls, memory_model="shadow")
    p = vm.m.personality
    p.before_slice()
    vm.m.engine.set_reg("ds", 0x21)  # the GDT in the shadow (a segment load by the VMM)
    for va in (0x200010, 0x201010, 0x202010, 0x203010, 0x204010):
        page_fault(vm, va, MOV_STORE if va & 0x1000 else MOV_LOAD, ebx=va, eax=1)
    ram = vm.m.memory.ram
    new = {0x200: 0x205000 | P | RW | US | A, 0x201: 0, 0x202: 0x202000 | P | US, 0x203: 0x203000 | P | RW,
           0x206: 0x207000 | P | RW | US | A | 0x40}  # moved+accessed (prefill), gone, read-only, ...
    recs = [(PT + 4 * i, 0) for i in new] + [(PT + 4 * 0x200, 0)]  # one entry logged twice
    for i, v in new.items():
        struct.pack_into("<I", ram, PT + 4 * i, v)
    if case == "misaligned":
        recs[2] = (PT + 4 * 0x202 + 2, 0)
    elif case == "unmapped":
        recs[3] = (0xF0000000, 0)  # no directory slot there
    elif case == "outside_ram":
        struct.pack_into("<I", ram, PT + 4 * 0x206, (RAM + 0x1000) | P)
    for k, (ptr, flags) in enumerate(recs):
        struct.pack_into("<II", ram, p.shared + SH_BATCH + 8 * k, ptr, flags)
    struct.pack_into("<I", ram, p.shared + SH_COUNT, 0x7FFFFFFF if case == "count" else len(recs))
    call, regs = {"pxe": ("SetPxE", {"eax": 0x208000 | P | RW, "edx": PT + 4 * 0x208, "ecx": 0}),
                  "flush": ("FlushDeferred", {})}.get(case, ("SetLazyMode", {"eax": 0}))
    vm.in_kernel(eip=site(vm, call), eflags=0x2, **regs)
    vm.exit("on_interrupt", 0x82)
    mmu = vm.m.mmu
    mmu.pull()
    seen = {
        "machine": bytes(vm.m.memory.machine),  # guest RAM with its A/D bits and every shadow table
        "snaps": {pg.mfn: bytes(pg.snap) for pg in mmu.pages.values() if pg.snap is not None},
        "wmap": {g: set(v) for g, v in mmu.wmap.items() if v},
        "stats": mmu.stats.as_dict(),
        "detail": dict(vm.detail),
        "in_guest": (p.batched, p.batch_flushes, struct.unpack_from("<I", ram, p.shared + SH_COUNT)[0]),
        "gp": vm.r("eip") == handler(13),
    }
    return vm, seen


@pytest.mark.parametrize("case", ["lazy", "flush", "pxe", "misaligned", "unmapped", "outside_ram", "count"])
def test_vmi2_batch_flush_in_c_agrees_with_the_python_path(case, engine_cls):
    """vmi2's flush at SetLazyMode(NONE), FlushDeferred and a SetPxE that finds the log full: a
    well-formed log is flushed in C on the C flavours (every record validated first, then each
    entry's shadows resynced in log order); a garbage one is handed whole to the Python path, which
    answers #GP at the flush.  Every flavour ends in the state of the Python path's flavour: machine
    memory (shadow tables and guest A/D bits), snapshots, reverse map, MMU counters, exit and event
    counts, the in-guest counters the bench reports and the consumed count."""
    vm, seen = _vmi2_batch(engine_cls, case)
    ref_cls = engine_cls.__bases__[0] if engine_cls.core == "c" else engine_cls
    _, ref = _vmi2_batch(ref_cls, case)
    good = case in ("lazy", "flush", "pxe")
    vm.assert_path(c=good)
    assert seen["gp"] == (not good)
    assert seen["in_guest"] == ((6, 1, 0) if good else (0, 0, 0))
    if case != "count":  # a bad record: the Python path applied the ones before it, then refused
        assert seen["stats"]["zaps"] > 0 and seen["stats"]["prefills"] > 0
    for key in seen:
        assert seen[key] == ref[key], key
