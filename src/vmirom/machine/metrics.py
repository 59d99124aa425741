"""Exit accounting: every exit from guest code into the VMM is counted by kind.

The counters also remember the ORDER of the last few exits (`Metrics.recent`), for the crash
report of a VM that ended badly (`vmirom.debug.crashdump`): "what did the guest do just before".
Hot paths increment `detail` directly (no `count()` call), so the recording sits in the detail
counter itself; it costs ~0.25 us per exit (measured with timeit: 0.22 -> 0.47 us per increment),
~1-2 % of a boot.  `history=0` turns it off.

Exits completed by the compiled engine core (vmirom.engines.core) are counted in C, with a log of
their order; a source added with `add_source` folds them in whenever `kinds` or `detail` is read
or the Python path counts an exit, so readers see every exit once, under the same keys, and
`recent` keeps the order of C and Python exits.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

#: coarse kinds that are bookkeeping, not exits: slices, delivery steps, shadow-MMU events (docs/mmu.md)
NOT_EXITS = ("slice", "delivery", "mmu")


class _RecentCounter(Counter):
    """A Counter that appends every key it increments to a bounded deque."""

    def __init__(self, ring: deque) -> None:
        super().__init__()
        self._ring = ring

    def __setitem__(self, key, value, _set=dict.__setitem__) -> None:
        _set(self, key, value)
        self._ring.append(key)


#: source(kinds, detail, recent or None): adds the counts kept elsewhere since its last call
Source = Callable[[Counter, Counter, "deque[str] | None"], None]


class Metrics:
    """Two counters: `kinds` (coarse: io, hypercall, emulate, exception, interrupt, softint, cpuid,
    halt, slice ...) and `detail` ("hypercall:SetPxE", "io:out:0x3f8", "exception:14" ...), and
    `recent`: the last `history` exits in order (detail keys, or the coarse kind when it has none)."""

    def __init__(self, history: int = 32) -> None:
        self._kinds: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=max(history, 1))
        self._detail: Counter[str] = _RecentCounter(self.recent) if history > 0 else Counter()
        self._history = history > 0
        self._sources: list[Source] = []

    def add_source(self, source: Source) -> None:
        self._sources.append(source)

    def _collect(self) -> None:
        for s in self._sources:
            s(self._kinds, self._detail, self.recent if self._history else None)

    @property
    def kinds(self) -> Counter[str]:
        if self._sources:
            self._collect()
        return self._kinds

    @property
    def detail(self) -> Counter[str]:
        if self._sources:
            self._collect()
        return self._detail

    def tap(self, ring: deque) -> None:
        """Record the order of exits into `ring` instead (a tracer's deque subclass that also sees
        every key); keeps what was recorded so far."""
        ring.extend(self.recent)
        self.recent = ring
        if isinstance(self.detail, _RecentCounter):
            self.detail._ring = ring
        self._history = True

    def count(self, kind: str, n: int = 1) -> None:
        """Count an exit.  `kind` may be "coarse" or "coarse:detail"."""
        if self._sources:
            self._collect()  # earlier exits first: `recent` stays in order
        coarse = kind.split(":", 1)[0]
        self._kinds[coarse] += n
        if coarse != kind:
            self._detail[kind] += n
        elif self._history and kind != "slice":
            self.recent.append(kind)

    def event(self, key: str) -> None:
        """Count VMM bookkeeping that is not an exit of its own ("mmu:zap": a shadow entry dropped
        inside some exit), under a coarse kind left out of `total` and of `recent`."""
        coarse = key.split(":", 1)[0]
        self.kinds[coarse] += 1
        dict.__setitem__(self.detail, key, self.detail.get(key, 0) + 1)

    @property
    def total(self) -> int:
        return sum(v for k, v in self.kinds.items() if k not in NOT_EXITS)

    def as_dict(self) -> dict:
        return {
            "kinds": dict(sorted(self.kinds.items())),
            "detail": dict(sorted(self.detail.items())),
            "total_exits": self.total,
        }
