"""Medians and ratios over benchmark records.

The machines this runs on are shared and noisy, so the figures that matter are ratios between
targets measured in the same run (interleaved repeats), each taken between medians over repeats.
Pure functions over plain dicts (the JSON records), so they are tested with fabricated records.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

BASELINE = "bare"
#: (target with VMI call sites, target running the native build) pairs for the site-cost ratio
SITE_PAIRS = (("bare", "bare@native"), ("qemu", "qemu@native"), ("qemu-icount", "qemu-icount@native"))


def median(values: Iterable[float | None]) -> float | None:
    """Median of the non-None values (None if there are none)."""
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or not positive (a time of 0 is not a measurement)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def ordered(values: Iterable[str]) -> list[str]:
    """Distinct values in first-seen order."""
    seen: dict[str, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def summarize(records: list[dict[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per (test, target): medians over repeats and ratios to `baseline` for the same test.

    `ratio` compares the primary figures (`ns_per_iter`: host time on the VMM, the guest's clock on
    QEMU, see runs.primary_time); `guest_ratio` and `host_ratio` compare like with like.

    A record whose primary figure could not be measured (None, reason in its `unmeasured`) takes
    no part in the median; a row with no measured record has `ns_per_iter` None, no ratio, and
    the reason in `unmeasured` (`n_unmeasured` counts such records either way).

    Exits per iteration are medians per kind; `exits_total_per_iter` is the median of each record's
    total (not the sum of the per-kind medians)."""
    good = _ok(records)
    tests = ordered(r["test"] for r in records)
    targets = ordered(r["target"] for r in records)
    med: dict[tuple[str, str], dict[str, Any]] = {}
    for test in tests:
        for target in targets:
            rs = [r for r in good if r["test"] == test and r["target"] == target]
            if not rs:
                continue
            kinds = ordered(k for r in rs for k in r.get("exits_per_iter", {}))
            ns = median(r.get("ns_per_iter") for r in rs)
            why = [r["unmeasured"]["ns_per_iter"] for r in rs
                   if r.get("ns_per_iter") is None and "ns_per_iter" in (r.get("unmeasured") or {})]
            med[test, target] = {
                "test": test, "target": target, "n": len(rs),
                "ns_per_iter": ns,
                "n_unmeasured": sum(1 for r in rs if r.get("ns_per_iter") is None),
                "unmeasured": why[0] if ns is None and why else None,
                # from a measured record (an unmeasured one has none)
                "time_source": next((r["time_source"] for r in rs if r.get("time_source")), None),
                "guest_unit": rs[0].get("guest_unit"),
                "guest_ns_per_iter": median(r.get("guest_per_iter") for r in rs
                                            if r.get("guest_unit") == "ns"),
                "host_ns_per_iter": median(r.get("host_ns_per_iter") for r in rs),
                "exits_per_iter": {k: median(r.get("exits_per_iter", {}).get(k, 0.0) for r in rs)
                                   for k in kinds},
                "exits_total_per_iter": median(r.get("exits_total_per_iter") for r in rs),
                "outside_share": median(r.get("outside_share") for r in rs),
            }
    rows = []
    for (test, _target), row in med.items():
        base = med.get((test, baseline))
        if row["time_source"] == "icount":     # instructions, not time: no ratio to a time
            base = None
        row["ratio"] = ratio(row["ns_per_iter"], base["ns_per_iter"] if base else None)
        row["guest_ratio"] = ratio(row["guest_ns_per_iter"], base["guest_ns_per_iter"] if base else None)
        row["host_ratio"] = ratio(row["host_ns_per_iter"], base["host_ns_per_iter"] if base else None)
        rows.append(row)
    return rows


def site_cost(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cost of the VMI call sites with no ROM: (kernel with sites) / (native build), per platform and test."""
    by = {(r["test"], r["target"]): r for r in summary}
    out = []
    for test in ordered(r["test"] for r in summary):
        for with_sites, native in SITE_PAIRS:
            a, b = by.get((test, with_sites)), by.get((test, native))
            if a is None or b is None:
                continue
            out.append({"test": test, "platform": with_sites,
                        "ratio": ratio(a["ns_per_iter"], b["ns_per_iter"]),
                        "guest_ratio": ratio(a["guest_ns_per_iter"], b["guest_ns_per_iter"]),
                        "host_ratio": ratio(a["host_ns_per_iter"], b["host_ns_per_iter"])})
    return out


def geomean(values: Iterable[float | None]) -> float | None:
    vs = [v for v in values if v is not None and v > 0]
    return statistics.geometric_mean(vs) if vs else None
