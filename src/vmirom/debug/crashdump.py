"""The vCPU's state when a VM ends any way but a clean exit: registers (general, segment with
their descriptors, control, descriptor tables), the instruction at EIP disassembled, the top of the
stack and the last exits in order.

Why: a triple fault or a hung guest used to end with one line ("triple fault: #GP while
delivering #PF ...") and nothing to start debugging from.  QEMU's `-d int,cpu_reset` and
`info registers` are what kernel developers reach for first; this is the same information,
printed by `vmirom run` and put into its `--json` under "crash".

Everything here reads through the checked page walker: a hostile guest's CR3, ESP or GDTR can
only make a field say "unreadable", never crash the report.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmirom.machine import Machine

GPRS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4")
EFLAGS_BITS = (
    (0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"), (11, "OF"),
    (14, "NT"), (16, "RF"), (17, "VM"),
)  # fmt: skip
CODE_BYTES = 32
STACK_WORDS = 8


def eflags_text(v: int) -> str:
    """ "IF ZF IOPL=1" style (what gdb and QEMU print)."""
    names = [n for bit, n in EFLAGS_BITS if v >> bit & 1]
    return " ".join(names + [f"IOPL={v >> 12 & 3}"])


def _descriptor(machine: Machine, selector: int, gdt: tuple[int, int]) -> dict:
    """The GDT descriptor a selector names (base, limit, access byte, DPL), read through paging."""
    from vmirom.machine.faults import GuestFault

    out: dict = {"selector": selector}
    index = selector & ~7
    if selector & 4:
        out["table"] = "LDT"
        return out
    if index == 0 or index + 7 > gdt[1]:
        return out
    try:
        lo, hi = struct.unpack("<II", machine.paging.read(gdt[0] + index, 8))
    except GuestFault:
        out["error"] = "GDT unreadable"
        return out
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    if hi & (1 << 23):  # granularity: 4 KiB units
        limit = (limit << 12) | 0xFFF
    out.update(
        base=(lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000),
        limit=limit,
        access=hi >> 8 & 0xFF,
        dpl=hi >> 13 & 3,
        present=bool(hi >> 15 & 1),
    )
    return out


def disassemble(code: bytes, address: int, count: int = 4) -> list[str]:
    """Up to `count` instructions of `code` at `address`, as "0xADDR: bytes  mnemonic operands"."""
    try:
        import capstone
    except ImportError:  # pragma: no cover - capstone is a dependency
        return [f"{address:#010x}: {code.hex()}"]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    lines = []
    for insn in md.disasm(code, address):
        lines.append(f"{insn.address:#010x}: {insn.bytes.hex():<16} {insn.mnemonic} {insn.op_str}".rstrip())
        if len(lines) >= count:
            break
    if not lines and code:
        lines.append(f"{address:#010x}: {code[:8].hex()}  (not a valid instruction)")
    return lines


def capture(machine: Machine) -> dict:
    """The vCPU's state as plain data (JSON-ready).  Never raises: what cannot be read is reported
    as such (the engine may be in the state that killed the run)."""
    eng = machine.engine
    state: dict = {}

    def read(name: str):
        try:
            return eng.reg(name)
        except Exception:  # noqa: BLE001 - a broken engine state is part of the report
            return None

    state["registers"] = {n: read(n) for n in (*GPRS, "eip", "eflags")}
    fl = state["registers"]["eflags"]
    state["eflags_flags"] = eflags_text(fl) if fl is not None else "?"
    state["control"] = {n: read(n) for n in CONTROL}
    gdtr, idtr = read("gdtr"), read("idtr")
    state["tables"] = {
        "gdtr": {"base": gdtr[0], "limit": gdtr[1]} if gdtr else None,
        "idtr": {"base": idtr[0], "limit": idtr[1]} if idtr else None,
    }
    tr = read("tr")
    if tr:
        state["tables"]["tr"] = {"selector": tr[0], "base": tr[1], "limit": tr[2]}
    segs = {}
    for n in SEGMENTS:
        sel = read(n)
        if sel is None:
            segs[n] = None
        elif gdtr:
            segs[n] = _descriptor(machine, sel, gdtr)
        else:
            segs[n] = {"selector": sel}
    state["segments"] = segs
    cs = state["segments"].get("cs") or {}
    state["cpl"] = cs.get("selector", 0) & 3
    state["halted"] = bool(machine.halted)
    eip = state["registers"]["eip"]
    user = state["cpl"] == 3
    if eip is not None:
        code = machine.paging.read_code(eip, CODE_BYTES, user=user)
        state["code"] = {
            "eip": eip,
            "bytes": code.hex(),
            "disassembly": disassemble(code, eip) if code else [f"{eip:#010x}: (not mapped)"],
        }
    esp = state["registers"]["esp"]
    if esp is not None:
        from vmirom.machine.faults import GuestFault

        try:
            raw = machine.paging.read(esp, 4 * STACK_WORDS)
            state["stack"] = list(struct.unpack(f"<{STACK_WORDS}I", raw))
        except GuestFault:
            state["stack"] = None
    state["last_exits"] = list(machine.metrics.recent)
    return state


def _hex(v) -> str:
    return "????????" if v is None else f"{v:08x}"


def format_text(state: dict) -> str:
    """The report as text, laid out like QEMU's `info registers`."""
    r = state.get("registers") or {}
    c = state.get("control") or {}
    lines = [
        "vCPU state (CPL {}{}):".format(state.get("cpl", "?"), ", halted" if state.get("halted") else ""),
        "  " + " ".join(f"{n.upper()}={_hex(r.get(n))}" for n in GPRS[:4]),
        "  " + " ".join(f"{n.upper()}={_hex(r.get(n))}" for n in GPRS[4:]),
        f"  EIP={_hex(r.get('eip'))} EFLAGS={_hex(r.get('eflags'))} [{state.get('eflags_flags', '?')}]",
    ]
    for n, d in (state.get("segments") or {}).items():
        if d is None:
            lines.append(f"  {n.upper()}=????")
        elif "base" in d:
            lines.append(
                f"  {n.upper()}={d['selector']:04x} base={d['base']:08x} limit={d['limit']:08x} "
                f"access={d['access']:02x} DPL={d['dpl']}{'' if d['present'] else ' NOT PRESENT'}"
            )
        else:
            note = d.get('table', '') + d.get('error', '')
            lines.append(f"  {n.upper()}={d['selector']:04x} {note}".rstrip())
    lines.append("  " + " ".join(f"{n.upper()}={_hex(c.get(n))}" for n in CONTROL))
    t = state.get("tables") or {}
    parts = []
    for n in ("gdtr", "idtr"):
        v = t.get(n)
        if v:
            parts.append(f"{n.upper()}={v['base']:08x}/{v['limit']:04x}")
    if t.get("tr"):
        parts.append(f"TR={t['tr']['selector']:04x} base={t['tr']['base']:08x}")
    if parts:
        lines.append("  " + " ".join(parts))
    code = state.get("code")
    if code:
        lines.append("  code at EIP:")
        for i, d in enumerate(code["disassembly"]):
            lines.append(f"  {'=>' if i == 0 else '  '} {d}")
    stack = state.get("stack")
    if stack is not None:
        lines.append("  stack: " + " ".join(f"{w:08x}" for w in stack))
    elif "stack" in state:
        lines.append("  stack: (ESP not mapped)")
    last = state.get("last_exits")
    if last:
        lines.append(f"  last {len(last)} exits (oldest first): " + ", ".join(last))
    return "\n".join(lines)
