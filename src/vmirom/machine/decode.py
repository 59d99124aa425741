"""Instruction decoding helpers (capstone), cached per (physical address, bytes)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import capstone
from capstone import x86_const as cx

if TYPE_CHECKING:
    from vmirom.machine.machine import Machine

_cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_cs.detail = True

_PUSHERS = ("push", "call", "enter", "pusha", "pushal", "pushf", "pushfd", "lcall", "int")


@lru_cache(maxsize=4096)
def _decode(code: bytes):
    for insn in _cs.disasm(code, 0, 1):
        mem_w = [op for op in insn.operands if op.type == cx.X86_OP_MEM and op.access & capstone.CS_AC_WRITE]
        mem_r = [op for op in insn.operands if op.type == cx.X86_OP_MEM and op.access & capstone.CS_AC_READ]
        regs = [(op.mem.base, op.mem.index) for op in mem_w]
        return insn.mnemonic, insn.size, bool(mem_w), bool(mem_r), regs
    return None


def decode_len(code: bytes) -> tuple[str, int] | None:
    d = _decode(bytes(code[:16]))
    return (d[0], d[1]) if d else None


def writes_memory(machine: Machine, eip: int, cr2: int) -> bool:
    walk = machine.paging.walk(cr2)
    user = machine.engine.cpl() == 3
    if walk.phys is not None and (walk.user or not user) and not walk.writable:
        return True
    code = machine.paging.read_code(eip, 16, user=user)
    return code_writes(code, cr2, machine.engine.reg("esp"), machine.engine.reg("edi"))


def code_writes(code: bytes, cr2: int, esp: int, edi: int) -> bool:
    """Did the instruction `code` fault at `cr2` on a write?  (The engine does not say; the page walk
    could not tell.)  A written memory operand, or an implicit stack push near ESP, means write."""
    d = _decode(code)
    if d is None:
        return False
    mnem, _size, has_w, has_r, _regs = d
    if mnem.split()[0] in _PUSHERS:
        return (cr2 & ~0xFFF) in ((esp - 4) & ~0xFFF, (esp - 64) & ~0xFFF, esp & ~0xFFF) or not has_r
    if has_w and has_r and mnem.startswith(("movs", "cmps")):
        return (cr2 & ~0xFFF) == (edi & ~0xFFF)
    return has_w
