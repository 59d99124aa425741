"""Exit accounting: every exit from guest code into the VMM is counted by kind."""

from __future__ import annotations

from collections import Counter


class Metrics:
    """Two counters: `kinds` (coarse: io, hypercall, emulate, exception, interrupt, softint, cpuid,
    halt, slice ...) and `detail` ("hypercall:SetPxE", "io:out:0x3f8", "exception:14" ...)."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.detail: Counter[str] = Counter()

    def count(self, kind: str, n: int = 1) -> None:
        """Count an exit.  `kind` may be "coarse" or "coarse:detail"."""
        coarse = kind.split(":", 1)[0]
        self.kinds[coarse] += n
        if coarse != kind:
            self.detail[kind] += n

    @property
    def total(self) -> int:
        return sum(v for k, v in self.kinds.items() if k not in ("slice", "delivery"))

    def as_dict(self) -> dict:
        return {
            "kinds": dict(sorted(self.kinds.items())),
            "detail": dict(sorted(self.detail.items())),
            "total_exits": self.total,
        }
