"""The Unicorn (software x86) engine.

ALL the Unicorn 2.1.4 workarounds live in this file, each with a comment saying why
(facts measured in ../shared/unicorn-notes.md):

W1  #1883 double fault: Unicorn never clears QEMU's `env->old_exception`, so the *second* fault of a
    run is reported as #DF and the third halts as a triple fault.  We find the field's offset inside a
    saved `uc_context` by probing (self-calibrating; 5536 in 2.1.4) and write -1 there after every
    exception hook (`fault_done`).
W2  No ring change through reg_write: QEMU takes the CPL from hflags (set from SS.DPL on SS loads) and
    `reg_write(SS)` refuses RPL/DPL != CPL.  `switch_ring` saves a context, sets the CPL bits of
    `hflags` (offset also found by probing), restores it, then loads SS and CS normally.  This
    replaces both the call-gate trampoline (needs a user-visible code page) and the slow
    context-template method of the notes.
W3  TR must be loaded with type 9 (available TSS, flags 0x8900), never 0x8B00 (busy): QEMU's task
    code calls cpu_abort("invalid tss type") -> SIGABRT of the whole process on the first stack switch.
W4  Code written by Python is not invalidated in the translation cache: `invalidate_code` calls
    ctl_remove_cache.  Page-table edits by Python need a TLB flush: `flush_tlb`.
W10 Never hand an address the guest has not mapped to ctl_remove_cache (see invalidate_code).
W13 Stale EIP after a hook wrote EIP: `uc_reg_write(EIP)` inside a hook sets Unicorn's quit_request,
    and while it stays set (until the next emu_start) an asynchronous stop (the slice timeout)
    skips synchronize_from_tb: EIP then reads the value the hook wrote, however far the guest ran
    through chained translation blocks since.  The next slice restarted there with the current
    registers (fullvirt: a console loop re-entered after its `cli` with EDX = 0x3F8 printed 1 KB
    of stack and later jumped to 0x10003).  So inside an INTR hook (outside any translation block,
    the next block is looked up from env->eip) EIP is written through the saved context together
    with the W1 reset (`_pending_eip`, no quit_request, no extra cost); inside an instruction or
    code hook (the write must leave the current block) the slice ends right after the write.
W5  `in`/`out` never check IOPL in Unicorn: the machine checks CPL <= IOPL itself (hook side).
W6  `ud2` / invalid opcodes arrive at UC_HOOK_INSN_INVALID, not INTR 6; `sysenter` at an INSN hook.
W7  `emu_start(count=N)` installs an internal per-instruction hook (very slow), and `timeout=`
    starts a thread per slice that polls the wall clock with usleep(2): slices are ended instead by
    a POSIX timer whose expiry calls `uc_emu_stop` in C (see vmirom.engines.slicetimer).
W19 An instruction resumed after its store: Unicorn 2.1.4 checks for an exit request after every
    guest memory access and ends the instruction there with EIP back at its START, so a W7 timer
    stop landing right after a store ran that instruction again in the next slice (`incl` on a
    counter: +1; `decl` loop counters, `xchg`).  Fixed in the engine (part 5 of our patch: an
    asynchronous stop waits for the next block's start); the stock wheel keeps it, nothing here can
    repair it (docs/engine.md).  The W7 timer also repeats until disarmed: an expiry landing before
    emu_start has set itself up is lost (see vmirom.engines.slicetimer).
W9  A native `hlt` at ring 0 just ends emu_start (no hook): detected after the slice (see run_slice).
W8  A Python exception inside a hook must not unwind through C: every hook catches everything, stores
    it, and stops the engine; `run_slice` re-raises it afterwards.
W11 No `until` address.  At the end of every `emu_start`, Unicorn drops the translation at `until - 1`
    and, to find it, walks the guest page tables for that LINEAR address.  When the guest has not
    mapped it (until=0xffffffff: never mapped) the walk is a real #PF inside QEMU: it writes CR2
    (measured: 0xfffffffe after any slice, however it ended), the error code and old_exception.  A
    slice boundary between a #PF delivery and the guest's `mov %cr2` showed the guest a bogus fault
    address (user processes killed at random, kernels jumping into data).  With
    UC_CTL_UC_USE_EXITS on and an empty exit set, emu_start has no exit address at all and nothing
    is walked; slices end only by timeout or stop().
W12 The binding's `reg_read`/`reg_write` cost 2-7 us each (type dispatch, a fresh ctypes object per
    call); hypercall handlers read several registers per exit.  Scalar registers therefore go through
    direct C calls of `uc_reg_read`/`uc_reg_write` (a second CDLL handle on the same library, no
    argtypes, preallocated buffers), and `reader()` batches several with `uc_reg_read_batch`.  The C
    side writes 2 bytes for selectors and 4 for the rest, hence the masks.  The same goes for the
    hot writes: segment loads, `writer()`/`enter_handler` (uc_reg_write_batch) and the W1/W2/W13
    context pokes (uc_context_save/restore with preset views of the three fields).  `reg_gen`
    counts hook entries, slices and writes, so a batched read can be reused within one exit.
W14 Code hooks are SKIPPED while an asynchronous `uc_emu_stop` (the W7 slice timer) is pending, but
    the translation block goes on executing: the hooked instruction runs without its callback.
    Measured: two hooked instructions in one block, 66 of 2000 timer-ended slices ran the second
    one without its hook.  Not fixable from here; a user of `add_code_hook` must tolerate it
    (fullvirt repairs what its popf/iret pre-hooks would have done, see docs/fullvirt.md).
W15 Memory hooks only where they can fire.  Unicorn keeps a page's guest stores on its slow path
    while ANY memory hook's range covers the page (uc_mem_hook_installed), so hooks over the whole
    address space cost every store the self-modifying-code check even on our patched engine
    (docs/engine.md).  The unmapped hooks cover physical addresses from the end of RAM up (RAM is
    mapped whole from 0: nothing below it is unmapped), the write-protect hook only the read-only
    ROM pages; the ranges are physical, as Unicorn checks them (paddr).
W16 Code written by the VMM (a descriptor-table write made for the guest over bytes it executes,
    the loader) is invisible to the translation cache: the VMM writes guest RAM through the mmap,
    and even uc_mem_write never invalidated in 2.1.4 (W4).  `invalidate_code` (physical) therefore
    rewrites a small range through uc_mem_write on our patched engine, which drops exactly the
    translations overwritten (part 3 of the patch); on any other build it flushes as W4/W10 say.
W17 Counting instructions (gdb single-step, the deterministic clock): `emu_start(count=N)` adds a
    code hook over every address (W7: slow, so only while counting) but does NOT drop the blocks
    translated without it: a cached block then runs uncounted (measured: count=5 after a free run
    never stopped).  `run_slice` flushes the translation cache whenever counting is switched on or
    off.  The number of instructions a slice ran is Unicorn's private `emu_counter`, read at an
    offset found by probing (`counter_offset`); it also counts the instruction at which a code hook
    stopped the slice (that one did not run: `uncount_current`), and the one the count ended before.
Engine facts measured from C (docs/engine.md; the older Python-in-the-loop figures in the notes
overstated them): an emu_start/emu_stop round trip is ~1 us or less (0.3 us), an EIP write in a
hook costs 40-150 ns (the ~4.5 us once measured was the binding), and 2.1.4 exports
uc_vmem_read/uc_vmem_write/uc_vmem_translate (the machine's own page walker stays: it applies the
guest's checks and reports the guest's faults without touching engine state).
The library itself is the one vmirom builds (vmirom.engines.libunicorn; the stock wheel's on
request or when it is not built): W15/W16 need our patch to pay off or to be exact.
W18 A fault raised by an exit handler inside an instruction hook (in/out, cpuid, sysenter) or a code
    hook must stop the guest there, but Unicorn calls those hooks from the middle of a translation
    block and goes on executing the block after the hook returns (uc_emu_stop and EIP writes only
    take effect at the next check: after the next guest memory access or at the block's end).
    Measured: a user `in` refused with #GP, then `out` to the debug-exit port in the same block,
    ran with the handler's CS - user code powered the VM off.  `fence()`: save the whole CPU
    context, point CR3 at an all-zero page directory (a read-only VMM page above RAM) with paging
    on, and stop.  Whatever the block still executes touches no memory (every access faults inside
    QEMU before it happens, leaving the block) and reaches no device (hooks are ignored while
    fenced); at the end of the slice the saved context is restored (registers, CR3/CR0, EIP at the
    faulting instruction: this also undoes the SYSENTER helper's EIP += 2 after its hook) and the
    machine delivers the fault between slices.
Unicorn can still abort the host process on some CPU states it does not support, which is why the
runner executes each VM in a child process (see vmirom.runner).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import struct
from collections.abc import Callable

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_WRITE,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from vmirom.engines import libunicorn
from vmirom.engines.base import Engine, EngineError, EngineHooks, SliceResult, segment_descriptor
from vmirom.engines.slicetimer import SliceTimer

_REGS = {
    "eax": X.UC_X86_REG_EAX,
    "ecx": X.UC_X86_REG_ECX,
    "edx": X.UC_X86_REG_EDX,
    "ebx": X.UC_X86_REG_EBX,
    "esp": X.UC_X86_REG_ESP,
    "ebp": X.UC_X86_REG_EBP,
    "esi": X.UC_X86_REG_ESI,
    "edi": X.UC_X86_REG_EDI,
    "eip": X.UC_X86_REG_EIP,
    "eflags": X.UC_X86_REG_EFLAGS,
    "cr0": X.UC_X86_REG_CR0,
    "cr2": X.UC_X86_REG_CR2,
    "cr3": X.UC_X86_REG_CR3,
    "cr4": X.UC_X86_REG_CR4,
    "cs": X.UC_X86_REG_CS,
    "ss": X.UC_X86_REG_SS,
    "ds": X.UC_X86_REG_DS,
    "es": X.UC_X86_REG_ES,
    "fs": X.UC_X86_REG_FS,
    "gs": X.UC_X86_REG_GS,
    "dr0": X.UC_X86_REG_DR0,
    "dr1": X.UC_X86_REG_DR1,
    "dr2": X.UC_X86_REG_DR2,
    "dr3": X.UC_X86_REG_DR3,
    "dr6": X.UC_X86_REG_DR6,
    "dr7": X.UC_X86_REG_DR7,
    "gdtr": X.UC_X86_REG_GDTR,
    "idtr": X.UC_X86_REG_IDTR,
    "tr": X.UC_X86_REG_TR,
    "ldtr": X.UC_X86_REG_LDTR,
}
#: W17: a read-only all-zero page above guest RAM: the page directory of a fenced CPU
FENCE_PD = 0xFFFFF000
_TABLE_REGS = ("gdtr", "idtr")  # (base, limit) in our interface
_SEL_REGS = ("tr", "ldtr")  # (selector, base, limit, flags)
_SEG_REGS = ("cs", "ss", "ds", "es", "fs", "gs")
#: W12: registers read/written as plain integers through the direct C path, with their value mask
_SCALAR_MASK = {
    n: (0xFFFF if n in _SEG_REGS else 0xFFFFFFFF) for n in _REGS if n not in _TABLE_REGS + _SEL_REGS
}
#: registers whose write has no side effect beyond the value (no descriptor load, no TLB/mode change)
_PLAIN_WRITE = frozenset(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags", "cr2"))
_REWRITE_MAX = 0x10000  # W16: larger invalidations flush the whole translation cache instead
_PHYS_END = (1 << 64) - 1  # hook ranges are inclusive physical addresses (W15)
_NO_UNTIL = 0  # ignored: the engine runs with an empty exit set (W11); slices end by time or stop()


# ------------------------------------------------------------------------------------------------
# W1/W2: self-calibration of the uc_context offsets of `old_exception` and the CPL bits of `hflags`
# ------------------------------------------------------------------------------------------------
class _Probe:
    """A throw-away Uc with a flat GDT (rings 0, 1, 3), used to find context offsets."""

    GDT, TSS, CODE = 0x1000, 0x2000, 0x3000

    def __init__(self, code: bytes) -> None:
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.mem_map(0, 0x100000, UC_PROT_ALL)
        gdt = b"".join(
            [
                bytes(8),
                segment_descriptor(0, 0xFFFFF, 0x9A),
                segment_descriptor(0, 0xFFFFF, 0x92),  # 0x08 / 0x10 ring 0
                segment_descriptor(0, 0xFFFFF, 0xFA),
                segment_descriptor(0, 0xFFFFF, 0xF2),  # 0x18 / 0x20 ring 3
                segment_descriptor(0, 0xFFFFF, 0xBA),
                segment_descriptor(0, 0xFFFFF, 0xB2),  # 0x28 / 0x30 ring 1
                segment_descriptor(self.TSS, 103, 0x89, 0),  # 0x38 TSS
            ]
        )
        self.uc.mem_write(self.GDT, gdt)
        tss = bytearray(104)
        struct.pack_into("<II", tss, 4, 0x8000, 0x10)  # esp0/ss0
        self.uc.mem_write(self.TSS, bytes(tss))
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, self.GDT, len(gdt) - 1, 0))
        self.uc.reg_write(X.UC_X86_REG_CS, 0x08)
        for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
            self.uc.reg_write(r, 0x10)
        self.uc.reg_write(X.UC_X86_REG_TR, (0x38, self.TSS, 103, 0x8900))  # W3
        self.uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
        self.uc.mem_write(self.CODE, code)
        self.snaps: list[bytes] = []
        self.vectors: list[int] = []
        self.uc.hook_add(UC_HOOK_INTR, self._intr)

    def _intr(self, uc, intno, _ud):
        self.vectors.append(intno)
        self.snaps.append(bytes(uc.context_save()))
        uc.emu_stop()

    def run(self) -> None:
        self.uc.emu_start(self.CODE, 0xFFFFFFFF, timeout=200_000)  # no paging here: W11 does not apply


def _words(blob: bytes) -> list[int]:
    n = len(blob) // 4
    return list(struct.unpack_from(f"<{n}I", blob))


@functools.lru_cache(maxsize=1)
def calibrate() -> tuple[int, int]:
    """Return (offset of old_exception, offset of hflags) in a uc_context; raise EngineError if the
    probes do not give one clear answer (an unknown Unicorn build)."""
    # old_exception: -1 before any fault, == vector after one (probe #DE, then separately #GP).
    cands = None
    for code, vec in (
        (b"\x31\xc9\xf7\xf1", 0),  # xor ecx,ecx; div ecx -> #DE
        (b"\x31\xc0\x8e\xd0", 13),
    ):  # xor eax,eax; mov ss,ax -> #GP
        p = _Probe(code)
        before = _words(bytes(p.uc.context_save()))
        p.run()
        if p.vectors != [vec]:
            raise EngineError(f"unicorn calibration: expected vector {vec}, got {p.vectors}")
        after = _words(p.snaps[0])
        found = {
            i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a == 0xFFFFFFFF and b == vec
        }
        cands = found if cands is None else cands & found
    if not cands or len(cands) != 1:
        raise EngineError(f"unicorn calibration: old_exception not found ({cands})")
    off_exc = 4 * cands.pop()
    # hflags: CPL bits 0..1 are 0 at ring 0 and 3 at ring 3, everything else equal.
    # push 0x23; push 0x7000; pushf; push 0x1b; push ring3; iretd; ring3: int3
    ring3 = _Probe.CODE + 0x40
    code = (
        b"\x6a\x23"
        + b"\x68"
        + struct.pack("<I", 0x7000)
        + b"\x9c\x6a\x1b"
        + b"\x68"
        + struct.pack("<I", ring3)
        + b"\xcf"
    ).ljust(0x40, b"\x90") + b"\xcc"
    p = _Probe(code)
    ring0 = _words(bytes(p.uc.context_save()))
    p.run()
    if p.vectors != [3]:
        raise EngineError(f"unicorn calibration: ring-3 probe gave {p.vectors}")
    r3 = _words(p.snaps[0])
    cands2 = [i for i, (a, b) in enumerate(zip(ring0, r3, strict=False)) if a & 3 == 0 and a ^ b == 3]
    if len(cands2) != 1:
        raise EngineError(f"unicorn calibration: hflags not found ({cands2})")
    return off_exc, 4 * cands2[0]


@functools.lru_cache(maxsize=1)
def counter_offset() -> int:
    """W17: offset of `emu_counter` (uint64, followed by `emu_count`) inside Unicorn's uc_struct: after
    emu_start(count=n) over straight-line code it holds n + 1 and the next field n."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    uc.mem_write(0x1000, b"\x90" * 256)
    uc.ctl_exits_enabled(True)
    base, span = uc._uch.value, 8192
    cands: set[int] | None = None
    for n in (10, 37, 61):
        uc.emu_start(0x1000, 0, count=n)
        blob = ctypes.string_at(base, span)
        found = {i for i in range(0, span - 16, 8) if struct.unpack_from("<QQ", blob, i) == (n + 1, n)}
        cands = found if cands is None else cands & found
    if not cands or len(cands) != 1:
        raise EngineError(f"unicorn calibration: emu_counter not found ({cands})")
    return cands.pop()


@functools.lru_cache(maxsize=1)
def eip_offset() -> int:
    """W13: offset of EIP inside a saved uc_context (found by saving two contexts that differ only
    in EIP)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    blobs = []
    for v in (0x12345678, 0x9ABCDEF0):
        uc.reg_write(X.UC_X86_REG_EIP, v)
        blobs.append(_words(bytes(uc.context_save())))
    cands = [i for i, (a, b) in enumerate(zip(*blobs, strict=False)) if (a, b) == (0x12345678, 0x9ABCDEF0)]
    if len(cands) != 1:
        raise EngineError(f"unicorn calibration: EIP not found in the context ({cands})")
    return 4 * cands[0]


class _CRegs:
    """W12: direct C access to one Uc's scalar registers (None-safe: `make` returns None when the
    binding's internals are not what we expect, and the engine then uses the public API)."""

    def __init__(self, uc: Uc) -> None:
        from unicorn.unicorn_py3.unicorn import uclib  # the binding's loaded library

        lib = ctypes.CDLL(uclib._name)  # same library, fresh function objects without argtypes
        self.read_fn = lib.uc_reg_read
        self.write_fn = lib.uc_reg_write
        self.batch_fn = lib.uc_reg_read_batch
        self.wbatch_fn = lib.uc_reg_write_batch
        self.ctx_save = lib.uc_context_save
        self.ctx_restore = lib.uc_context_restore
        self.uch = ctypes.c_void_p(uc._uch.value)
        self.buf = ctypes.c_uint32()
        self.ref = ctypes.byref(self.buf)
        self.wbuf = ctypes.c_uint32()
        self.wref = ctypes.byref(self.wbuf)

    @classmethod
    def make(cls, uc: Uc) -> _CRegs | None:
        try:
            c = cls(uc)
            uc.reg_write(X.UC_X86_REG_EDI, 0x5A5A1234)
            ok = c.read(X.UC_X86_REG_EDI) == 0x5A5A1234
            uc.reg_write(X.UC_X86_REG_EDI, 0)
            return c if ok else None
        except Exception:  # noqa: BLE001 - any surprise: fall back to the public API
            return None

    def read(self, reg_id: int) -> int:
        if self.read_fn(self.uch, reg_id, self.ref):
            raise EngineError(f"uc_reg_read({reg_id}) failed")
        return self.buf.value

    def write(self, reg_id: int, value: int) -> None:
        self.wbuf.value = value & 0xFFFFFFFF
        if self.write_fn(self.uch, reg_id, self.wref):
            raise EngineError(f"uc_reg_write({reg_id}) failed")

    def reader(self, names: tuple[str, ...]) -> Callable[[], tuple[int, ...]]:
        # One slot per register, zeroed once: a selector's slot only ever receives 2 bytes, so its
        # upper half stays 0 and no mask is needed.  struct.unpack_from reads the buffer in one step
        # (iterating a ctypes array costs ~0.5 us per element).  Table registers (gdtr/idtr, and
        # tr/ldtr) get a uc_x86_mmr slot of 24 bytes {u16 selector; u64 base; u32 limit; u32 flags}
        # and give (base, limit), resp. (selector, base, limit, flags), flattened into the tuple.
        n = len(names)
        ids = (ctypes.c_int * n)(*(_REGS[x] for x in names))
        fmt, offs, size = "<", [], 0
        for x in names:
            offs.append(size)
            if x in _TABLE_REGS:
                fmt, size = fmt + "8xQI4x", size + 24
            elif x in _SEL_REGS:
                fmt, size = fmt + "H6xQII", size + 24
            else:
                fmt, size = fmt + "I", size + 4
        vals = (ctypes.c_uint8 * max(size, 1))()
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + o for o in offs))
        unpack = struct.Struct(fmt).unpack_from
        fn, uch = self.batch_fn, self.uch

        def read_all() -> tuple[int, ...]:
            if fn(uch, ids, ptrs, n):
                raise EngineError("uc_reg_read_batch failed")
            return unpack(vals)

        return read_all

    def writer(self, names: tuple[str, ...]) -> Callable[..., None]:
        """A function writing the scalar registers `names` (in that order) in one uc_reg_write_batch
        call.  No W13 handling: callers must not include EIP."""
        n = len(names)
        ids = (ctypes.c_int * n)(*(_REGS[x] for x in names))
        vals = (ctypes.c_uint32 * n)()
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + 4 * i for i in range(n)))
        pack = struct.Struct(f"<{n}I").pack_into
        fn, uch = self.wbatch_fn, self.uch

        def write_all(*values: int) -> None:
            pack(vals, 0, *values)
            if fn(uch, ids, ptrs, n):
                raise EngineError(f"cannot load {names}={tuple(hex(v) for v in values)}")

        return write_all


def _slice_timer(uc: Uc) -> SliceTimer:
    """W7: a POSIX timer that calls the library's own `uc_emu_stop(uc)` in C (no GIL needed)."""
    from unicorn.unicorn_py3.unicorn import uclib  # the binding's loaded library

    lib = ctypes.CDLL(uclib._name)
    return SliceTimer(ctypes.cast(lib.uc_emu_stop, ctypes.c_void_p).value, uc._uch.value)


def _guarded(method):
    """W8: never let a Python exception unwind through Unicorn's C frames."""

    @functools.wraps(method)
    def wrapper(self, *args):
        self.reg_gen += 1
        if self._fenced:  # W18: the rest of a fenced block reaches neither the machine nor devices
            return True if method.__name__ in ("_h_invalid", "_h_cpuid") else 0
        try:
            out = method(self, *args)
            if self._core is not None:
                self._core.sync()  # the Python path may have changed what the C core reads
            return out
        except BaseException as exc:  # noqa: BLE001 - re-raised by run_slice
            if self._hook_error is None:
                self._hook_error = exc
            self.uc.emu_stop()
            return True if method.__name__ in ("_h_invalid", "_h_mem") else 0

    return wrapper


class UnicornEngine(Engine):
    """One vCPU on Unicorn 2.1.4 in 32-bit protected mode."""

    name = "unicorn"

    def __init__(self) -> None:
        self.off_exc, self.off_hflags = calibrate()
        self.off_eip = eip_offset()  # W13
        self._in_intr = False  # W13: inside the UC_HOOK_INTR callback
        self._between_blocks = False  # W18: in a hook Unicorn calls outside any translation block
        self._fenced = False  # W18: a fault is parked, the CPU is fenced until the slice ends
        self._running = False  # W13: inside emu_start (hooks may be running)
        self._pending_eip: int | None = None  # W13: EIP written in an INTR hook, not yet in env
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.ctl_exits_enabled(True)  # W11: no `until`, so no page walk at the end of a slice
        self._ctx = self.uc.context_save()
        self._hooks: EngineHooks | None = None
        self._hook_error: BaseException | None = None
        self._stopped = False
        self._timer = _slice_timer(self.uc)  # W7
        self._ram_ptr = 0
        self._ram_size = 0
        self._readonly: list[tuple[int, int]] = []
        self._ram: mmap.mmap | None = None
        self._ram_buf = None
        self._c = _CRegs.make(self.uc)  # W12
        self.build = libunicorn.describe()
        #: W16: uc_mem_write invalidates overwritten translations (part 3 of OUR patch, this version)
        self._coherent_writes = self.build.build == "patched" and self.build.patch_sha256 == (
            libunicorn.patch_sha256()
        )
        self._pctx = self._make_pctx()  # after _ctx and _c
        #: bumped by every hook entry, slice and register/context write: a batched register read
        #: taken at generation g is still the CPU state while reg_gen == g (see Delivery)
        self.reg_gen = 0
        self._table_readers: dict[str, Callable[[], tuple[int, ...]]] = {}  # W12 for gdtr/idtr/tr/ldtr
        self._entered = False  # enter_handler did the INTR hook's W1/W13 context write already
        self._w_ring = self._w_same = self._w_same_cs = None  # enter_handler's batch writers
        self._w_sscs = None  # switch_ring's
        self._counting = False  # W17: the translation cache holds blocks with the count hook
        self._counter: ctypes.c_uint64 | None = None  # W17: Unicorn's emu_counter, once calibrated
        self._uncount = 0  # W17: a code hook stopped before its instruction ran
        self.icount_total = 0  # instructions run by counted slices so far
        self._core = None  # the compiled engine core, when it takes the INTR exits (use_core)
        self._intr_hook = None
        self._fence_ctx = self.uc.context_save()  # W18: the CPU state at the parked fault

    # -- setup ------------------------------------------------------------------------------------
    def attach_memory(self, ram: mmap.mmap, size: int, readonly: list[tuple[int, int]]) -> None:
        self._ram = ram
        self._ram_size = size
        self._readonly = [(max(0, s), min(e, size)) for s, e in readonly]
        self._ram_buf = ctypes.c_char.from_buffer(ram)
        self._ram_ptr = ctypes.addressof(self._ram_buf)
        # One mmap, mapped in pieces so the ROM pages can be read/exec only (writes reach
        # UC_HOOK_MEM_WRITE_PROT).
        cuts = sorted({0, size, *[a for r in readonly for a in r if 0 <= a <= size]})
        ro = [(s, e) for s, e in readonly]
        for start, end in zip(cuts, cuts[1:], strict=False):
            if end <= start:
                continue
            prot = UC_PROT_READ | UC_PROT_EXEC if any(s <= start and end <= e for s, e in ro) else UC_PROT_ALL
            self.uc.mem_map_ptr(start, end - start, prot, self._ram_ptr + start)
        if size <= FENCE_PD:
            self.uc.mem_map(FENCE_PD, 0x1000, UC_PROT_READ)  # W18: reads as zeros, a write is bad_memory

    def set_hooks(self, hooks: EngineHooks) -> None:
        self._hooks = hooks
        uc = self.uc
        self._intr_hook = uc.hook_add(UC_HOOK_INTR, self._h_intr)
        self._io_hooks = (uc.hook_add(UC_HOOK_INSN, self._h_in, None, 1, 0, X.UC_X86_INS_IN),
                          uc.hook_add(UC_HOOK_INSN, self._h_out, None, 1, 0, X.UC_X86_INS_OUT))
        uc.hook_add(UC_HOOK_INSN, self._h_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._h_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._h_invalid)  # W6
        # W15: memory hooks only where they can fire (unmapped: above RAM; write-protect: the ROM)
        uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED,
            self._h_mem,
            None,
            self._ram_size,
            _PHYS_END,
        )
        for start, end in self._readonly:
            if end > start:
                uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._h_mem, None, start, end - 1)
        if self._ram_size <= FENCE_PD:  # W18's page: a guest write there is an error of the guest's
            uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._h_mem, None, FENCE_PD, FENCE_PD + 0xFFF)

    def use_core(self, core) -> None:  # noqa: ANN001 - vmirom.engines.core.MachineCore
        """Let the compiled engine core take the INTR exits: its C hook replaces the Python one and
        calls `_h_intr` (through a ctypes callback) for every exit it does not complete.  The core
        applies W1/W2/W13 itself, with the offsets calibrated here.  After every exit the Python
        path handled, and before every slice, the machine state the core reads is published
        (`core.sync`)."""
        from unicorn.unicorn_py3.unicorn import uclib

        lib = ctypes.CDLL(uclib._name)  # the library the binding loaded (stock wheel or our build)
        names = ("uc_reg_read_batch", "uc_reg_write_batch", "uc_reg_read", "uc_reg_write", "uc_context_alloc",
                 "uc_context_save", "uc_context_restore", "uc_context_free", "uc_hook_add", "uc_hook_del",
                 "uc_emu_stop")
        fns = tuple(ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names)

        def fallback(_uc, intno, _ud):  # the Python path, W8-guarded (and followed by sync) like every hook
            self._h_intr(self.uc, intno, None)

        self._core_cb = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)(fallback)
        if self._hooks is not None:
            self.uc.hook_del(self._intr_hook)
        core.core.attach_uc(self.uc, self.uc._uch.value, fns, self.off_exc, self.off_hflags, self.off_eip,
                            ctypes.cast(self._core_cb, ctypes.c_void_p).value)
        if getattr(core, "mmu", None) is not None:  # W4's TLB flush from C, after a SetPxE done there
            core.core.set_uc_ctl(ctypes.cast(lib.uc_ctl, ctypes.c_void_p).value)
        if core.console and self._hooks is not None:
            # the console's hot in/out in C (console.c); every other access calls the Python hooks
            def port_in(_uc, port, size, _ud):
                return self._h_in(self.uc, port, size, None)

            def port_out(_uc, port, size, value, _ud):
                self._h_out(self.uc, port, size, value, None)

            vp, u32 = ctypes.c_void_p, ctypes.c_uint32
            self._core_io = (ctypes.CFUNCTYPE(u32, vp, u32, ctypes.c_int, vp)(port_in),
                             ctypes.CFUNCTYPE(None, vp, u32, ctypes.c_int, u32, vp)(port_out))
            for h in self._io_hooks:
                self.uc.hook_del(h)
            core.core.attach_io(*(ctypes.cast(cb, ctypes.c_void_p).value for cb in self._core_io))
        self._core = core

    # -- hooks (W8 guarded) -----------------------------------------------------------------------
    @_guarded
    def _h_intr(self, uc, intno, _ud):
        self._in_intr = self._between_blocks = True
        self._entered = False
        try:
            self._hooks.on_interrupt(intno)
        finally:
            self._in_intr = self._between_blocks = False
        if self._pending_eip is not None or (intno < 32 and not self._entered):
            self._poke_context(clear_exception=intno < 32)  # W1 + W13

    @_guarded
    def _h_in(self, uc, port, size, _ud):
        return self._hooks.on_port_in(port, size) & ((1 << (8 * size)) - 1)

    @_guarded
    def _h_out(self, uc, port, size, value, _ud):
        self._hooks.on_port_out(port, size, value)

    @_guarded
    def _h_cpuid(self, uc, _ud):
        return 1 if self._hooks.on_cpuid() else 0

    @_guarded
    def _h_sysenter(self, uc, _ud):
        self._hooks.on_sysenter()

    @_guarded
    def _h_invalid(self, uc, _ud):
        self._between_blocks = True  # called from the exception path, outside any block (W18)
        try:
            return bool(self._hooks.on_invalid_opcode())
        finally:
            self._between_blocks = False

    @_guarded
    def _h_mem(self, uc, access, address, size, value, _ud):
        write = access in (UC_MEM_WRITE, UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT)
        return bool(self._hooks.on_bad_memory(write, address, size, value, access == UC_MEM_WRITE_PROT))

    # -- running ------------------------------------------------------------------------------------
    def run_slice(self, timeout_us: int, count: int = 0) -> SliceResult:
        """Run until `timeout_us` of guest CPU time passed or stop(); with `count` > 0 instead until
        that many instructions ran (no timer: the slice's length is guest progress, W17)."""
        self.reg_gen += 1
        self._stopped = False
        self._hook_error = None
        # W1 again: a slice cut by the timeout between QEMU raising a fault and our hook seeing it
        # leaves old_exception set; the retried instruction would then be reported as #DF.
        # (Cheap insurance since W11 removed the exit-time walk that used to set it every slice.)
        self._poke_context(clear_exception=True)
        eip = self.uc.reg_read(X.UC_X86_REG_EIP)
        res = SliceResult()
        if bool(count) != self._counting:  # W17
            self._counting = bool(count)
            self.uc.ctl_flush_tb()
        self._uncount = 0
        self._running = True
        if not count:
            self._timer.arm(int(timeout_us) * 1000)  # W7
        try:
            self.uc.emu_start(eip, _NO_UNTIL, count=max(0, int(count)))  # W11
        except UcError as e:
            res.error = str(e)
        finally:
            timed_out = self._timer.disarm() if not count else False
            self._running = False
            self.reg_gen += 1  # the guest ran since the last hook: no batched read survives
        if count:
            ran = self._counter_value()
            timed_out = ran > count  # ended by the count, like a timer would have ended it
            self.icount_total += max(0, min(ran, count) - self._uncount)
            self._uncount = 0
        if self._fenced:  # W18: undo what the rest of the block did, back to the faulting instruction
            self._fenced = False
            self._pending_eip = None
            self.uc.context_restore(self._fence_ctx)
            self.flush_tlb()
            self.reg_gen += 1
            res.error, self._stopped = None, True
        if self._hook_error is not None:
            err, self._hook_error = self._hook_error, None
            raise err
        if self._core is not None:
            refused = self._core.core.take_error()
            if refused is not None:  # the C core's entry was refused by the engine (W8's equivalent)
                raise EngineError(refused)
        res.stopped = self._stopped
        if not res.stopped and not timed_out and res.error is None:
            # W9: a native `hlt` (ring 0) silently ends emu_start with EIP after it; no hook exists
            # for it.  A slice that ended by itself (no stop, no timer), right after an F4 byte, is a halt.
            res.halted = self._after_hlt()
        return res

    def _counter_value(self) -> int:
        if self._counter is None:
            self._counter = ctypes.c_uint64.from_address(self.uc._uch.value + counter_offset())
        return self._counter.value

    def icount(self) -> int:
        """Instructions run by counted slices, including the running one (hooks may ask)."""
        if self._running and self._counting:
            return self.icount_total + max(0, self._counter_value() - 1)
        return self.icount_total

    def uncount_current(self) -> None:
        """A code hook stopped the slice BEFORE its instruction ran: do not count that one."""
        self._uncount = 1

    def _after_hlt(self) -> bool:
        if self._hooks is None:
            return False
        try:
            return self._hooks.code_byte_before_eip() == 0xF4
        except Exception:  # noqa: BLE001 - unreadable code: not a halt
            return False

    def stop(self) -> None:
        self._stopped = True
        self.uc.emu_stop()

    # -- registers ----------------------------------------------------------------------------------
    def reg(self, name: str):
        if name == "eip" and self._pending_eip is not None:  # W13
            return self._pending_eip
        c = self._c
        if c is not None:
            mask = _SCALAR_MASK.get(name)
            if mask is not None:  # W12
                if c.read_fn(c.uch, _REGS[name], c.ref):
                    raise EngineError(f"cannot read {name}")
                return c.buf.value & mask
            if name in _TABLE_REGS or name in _SEL_REGS:  # W12: one batched read of a uc_x86_mmr
                r = self._table_readers.get(name)
                if r is None:
                    r = self._table_readers[name] = c.reader((name,))
                return r()
        v = self.uc.reg_read(_REGS[name])
        if name in _TABLE_REGS:
            return (v[1], v[2])
        return v

    def set_reg(self, name: str, value) -> None:
        self.reg_gen += 1
        if name == "eip" and self._running:  # W13
            if self._in_intr:
                self._pending_eip = value & 0xFFFFFFFF
                return
            self._stopped = True  # an instruction/code hook moved EIP: end the slice here
            self.uc.emu_stop()
        if name in _PLAIN_WRITE and self._c is not None:  # W12
            self._c.write(_REGS[name], value)
            return
        if name in _SEG_REGS and self._c is not None:  # W12: a descriptor load, same C entry point
            try:
                self._c.write(_REGS[name], value)
            except EngineError:
                raise EngineError(f"cannot load {name}={value!r}") from None
            return
        if name in _TABLE_REGS:
            base, limit = value
            value = (0, base, limit, 0)
        elif name == "tr":
            sel, base, limit, flags = value
            value = (sel, base, limit, (flags & ~0x0200) if (flags & 0x0F00) == 0x0B00 else flags)  # W3
        try:
            self.uc.reg_write(_REGS[name], value)
        except UcError as e:
            raise EngineError(f"cannot load {name}={value!r}: {e}") from None

    def reader(self, names: tuple[str, ...]) -> Callable[[], tuple[int, ...]]:
        """A function reading the registers `names` in one call (W12).  Scalars give one value each;
        table registers are flattened into the tuple: gdtr/idtr give (base, limit), tr/ldtr give
        (selector, base, limit, flags) (engines without this support: `reads_tables` is False)."""
        if self._c is None or any(n not in _REGS for n in names):
            return super().reader(names)
        read_all = self._c.reader(tuple(names))
        if "eip" not in names:
            return read_all
        i = 0  # EIP's index in the flattened tuple
        for n in names[: names.index("eip")]:
            i += 2 if n in _TABLE_REGS else 4 if n in _SEL_REGS else 1

        def read_with_pending() -> tuple[int, ...]:  # W13
            vals, p = read_all(), self._pending_eip
            return vals if p is None else vals[:i] + (p,) + vals[i + 1 :]

        return read_with_pending

    @property
    def reads_tables(self) -> bool:
        """True when `reader()` accepts table registers (flattened, see reader)."""
        return self._c is not None

    def cpl(self) -> int:
        # In protected mode CPL == CS.RPL (QEMU keeps them equal on every transition, and so do we).
        return self.reg("cs") & 3

    def _poke_context(self, *, cpl: int | None = None, clear_exception: bool = False) -> None:
        self.reg_gen += 1
        p = self._pctx
        if p is None:
            self._poke_context_public(cpl=cpl, clear_exception=clear_exception)
            return
        # W12 for contexts: direct C save/restore and preset views of the three fields (the binding's
        # context_update/context_restore and fresh from_address objects cost ~1 us each per exit)
        save, restore, uch, ctxp, p_eip, p_exc, p_hflags = p
        if save(uch, ctxp):
            raise EngineError("uc_context_save failed")
        if self._pending_eip is not None:  # W13
            p_eip.value = self._pending_eip
            self._pending_eip = None
        if clear_exception:  # W1
            p_exc.value = 0xFFFFFFFF
        if cpl is not None:  # W2
            p_hflags.value = (p_hflags.value & ~3) | cpl
        if restore(uch, ctxp):
            raise EngineError("uc_context_restore failed")

    def _context_base(self) -> int:
        ctx = self._ctx
        return (
            ctx.context.value
            if hasattr(ctx.context, "value")
            else ctypes.cast(ctx.context, ctypes.c_void_p).value
        )

    def _poke_context_public(self, *, cpl: int | None = None, clear_exception: bool = False) -> None:
        ctx = self._ctx
        self.uc.context_update(ctx)
        base = self._context_base()
        if self._pending_eip is not None:  # W13
            ctypes.c_uint32.from_address(base + self.off_eip).value = self._pending_eip
            self._pending_eip = None
        if clear_exception:  # W1
            ctypes.memmove(base + self.off_exc, b"\xff\xff\xff\xff", 4)
        if cpl is not None:  # W2
            p = ctypes.c_uint32.from_address(base + self.off_hflags)
            p.value = (p.value & ~3) | cpl
        self.uc.context_restore(ctx)

    def _make_pctx(self) -> tuple | None:
        """The direct-C context poke's pieces (None: use the binding)."""
        c = self._c
        if c is None:
            return None
        try:
            base = self._context_base()
            return (
                c.ctx_save,
                c.ctx_restore,
                c.uch,
                ctypes.c_void_p(base),
                ctypes.c_uint32.from_address(base + self.off_eip),
                ctypes.c_uint32.from_address(base + self.off_exc),
                ctypes.c_uint32.from_address(base + self.off_hflags),
            )
        except Exception:  # noqa: BLE001 - unexpected binding internals: the public path
            return None

    def switch_ring(self, cpl: int, cs: int, ss: int) -> None:
        self._poke_context(cpl=cpl, clear_exception=True)
        c = self._c
        if c is None:
            self.set_reg("ss", ss)
            self.set_reg("cs", cs)
            return
        if self._w_sscs is None:
            self._w_sscs = c.writer(("ss", "cs"))
        try:
            self._w_sscs(ss & 0xFFFF, cs & 0xFFFF)
        except EngineError:
            raise EngineError(f"cannot enter ring {cpl} with cs={cs:#x} ss={ss:#x}") from None

    def enter_handler(
        self, cpl: int | None, cs: int | None, ss: int, esp: int, eflags: int, eip: int
    ) -> None:
        """Enter an interrupt/exception handler in as few engine calls as possible (the machine's
        IDT delivery, the hottest exit path).  `cpl` is the new CPL for a ring change (then `ss`
        and `cs` are loaded, their DPL must equal it) or None for the same ring (then `cs`, when
        not None, is loaded and `ss` is ignored).  Values are 32-bit unsigned.

        Inside the INTR hook, or between slices, a ring change is ONE context round trip (CPL bits of
        hflags for W2, EIP for W13, old_exception for W1) plus one uc_reg_write_batch (SS, CS, ESP,
        EFLAGS); a same-ring entry is one batch, its EIP going through the hook's closing context
        write (W13) as before.  Inside an instruction or code hook (I/O, cpuid, invalid opcode) the
        EIP write must leave the current translation block, so the general path is taken."""
        self.reg_gen += 1
        c = self._c
        if c is None or (self._running and not self._in_intr):
            super().enter_handler(cpl, cs, ss, esp, eflags, eip)
            return
        if cpl is not None:
            self._pending_eip = eip
            self._poke_context(cpl=cpl, clear_exception=True)  # consumes _pending_eip
            self._entered = True  # the INTR hook's closing W1/W13 write is done already
            if self._w_ring is None:
                self._w_ring = c.writer(("ss", "cs", "esp", "eflags"))
            try:
                self._w_ring(ss, cs, esp, eflags)
            except EngineError:
                raise EngineError(f"cannot enter ring {cpl} with cs={cs:#x} ss={ss:#x}") from None
            return
        if cs is None:
            if self._w_same is None:
                self._w_same = c.writer(("esp", "eflags"))
            self._w_same(esp, eflags)
        else:
            if self._w_same_cs is None:
                self._w_same_cs = c.writer(("cs", "esp", "eflags"))
            self._w_same_cs(cs, esp, eflags)
        if self._in_intr:
            self._pending_eip = eip  # W13: written with the hook's closing context write
        else:
            c.write(_REGS["eip"], eip)

    def fence(self) -> bool:
        """W18 (see the module docstring)."""
        if not self._running or self._between_blocks:
            return False
        if self._fenced:
            return True
        self.uc.context_update(self._fence_ctx)
        self._fenced = True
        cr0 = self.reg("cr0")
        self.uc.reg_write(X.UC_X86_REG_CR4, self.reg("cr4") & ~0x20)  # 2-level walk of the zero page
        self.uc.reg_write(X.UC_X86_REG_CR3, FENCE_PD)
        self.uc.reg_write(X.UC_X86_REG_CR0, cr0 | 0x80000001)  # PG (+PE): every access walks it
        self.stop()
        return True

    def fault_done(self) -> None:
        self._poke_context(clear_exception=True)

    # -- caches, MSRs -----------------------------------------------------------------------------
    def invalidate_code(self, start: int, end: int) -> None:
        # W16: on our patched engine uc_mem_write drops the translations of the code it overwrites
        # (physical, exact; a page without code costs one lookup), so a small range is written
        # again through it.  Big ranges (a whole kernel load) still flush everything below.
        lo, hi = max(0, start), min(end, self._ram_size)
        if self._coherent_writes and 0 < hi - lo <= _REWRITE_MAX:
            self.uc.mem_write(lo, self._ram[lo:hi])
            return
        # W4 + W10: ctl_remove_cache takes LINEAR addresses and translates them with a TLB fill of its
        # own; an address the guest has not mapped raises a #PF inside QEMU that no hook sees (it
        # leaves old_exception = 14 and a pending exception: later faults become #DF, or the vCPU
        # halts for good).  So only ranges that are safe to translate use it (paging off); otherwise
        # the whole translation cache is flushed (rare: only loaders and patchers call this).
        if not self.uc.reg_read(X.UC_X86_REG_CR0) & (1 << 31) and end <= 1 << 32:
            self.uc.ctl_remove_cache(start, end)
        else:
            self.uc.ctl_flush_tb()

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)  # W4

    def read_msr(self, index: int) -> int:
        return self.uc.reg_read(X.UC_X86_REG_MSR, index)

    def write_msr(self, index: int, value: int) -> None:
        self.reg_gen += 1
        self.uc.reg_write(X.UC_X86_REG_MSR, (index, value))

    def add_code_hook(self, address: int, callback: Callable[[], None]) -> int:
        """Call `callback()` before the instruction at linear `address` executes (each time) - except
        when the slice timer's stop is already pending: then the instruction may run without it (W14)."""

        def cb(uc, addr, size, _ud):
            self.reg_gen += 1
            if self._fenced:  # W18
                return
            try:
                callback()
                if self._core is not None:
                    self._core.sync()
            except BaseException as exc:  # noqa: BLE001 - W8
                if self._hook_error is None:
                    self._hook_error = exc
                uc.emu_stop()

        return self.uc.hook_add(UC_HOOK_CODE, cb, None, address, address)

    def remove_hook(self, handle: int) -> None:
        self.uc.hook_del(handle)

    def close(self) -> None:
        self._hooks = None
        self._timer.close()
