"""`vmirom trace ...`: read a trace written by `vmirom run --trace FILE`.

    vmirom trace summary FILE           the per-kind table (count, handler time)
    vmirom trace plot FILE -o OUT.png   the exits over guest time, one row per kind (matplotlib)
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import click

from vmirom.cliutil import OutputPath, console, exit_epilog, json_option, write_json

CODES = exit_epilog("(here 1 means: the file cannot be read or is not a vmirom trace)")


def load(path: str) -> dict:
    """The trace document; a clean error for anything that is not one of ours."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise click.ClickException(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise click.ClickException(f"{path} is not a Chrome trace-event document (no traceEvents)")
    return doc


def exit_events(doc: dict) -> list[dict]:
    return [e for e in doc["traceEvents"]
            if isinstance(e, dict) and e.get("tid") == 2 and e.get("ph") in ("X", "i")]


@click.group("trace")
def trace() -> None:
    """Read a trace of `vmirom run --trace FILE` (the same file opens at ui.perfetto.dev)."""


@trace.command("summary", epilog=CODES)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="rows to show")
@json_option("Write the per-kind rows as JSON to FILE ('-': stdout).")
def summary(path: str, top: int, json_out: str | None) -> None:
    """Exits per kind with their handler time."""
    from rich.table import Table

    events = exit_events(load(path))
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for e in events:
        s = stats[e["name"]]
        s[0] += 1
        s[1] += e.get("dur", 0.0)
        s[2] = max(s[2], e.get("dur", 0.0))
    t = Table(title=f"{path}: {len(events)} exits")
    for col in ("exit", "count", "handler µs total", "mean", "max"):
        t.add_column(col, justify="left" if col == "exit" else "right")
    rows = sorted(stats.items(), key=lambda kv: -kv[1][0])[:top]
    for name, (n, tot, mx) in rows:
        t.add_row(name, str(n), f"{tot:,.0f}", f"{tot / n:.1f}", f"{mx:.0f}")
    console(json_out).print(t)
    if json_out:
        kinds = [{"exit": name, "count": n, "handler_us_total": tot, "handler_us_max": mx}
                 for name, (n, tot, mx) in rows]
        write_json(json_out, {"exits": len(events), "kinds": kinds})


@trace.command("plot", epilog=CODES)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=OutputPath(allow_stdout=False), help="PNG to write")
@click.option("--top", type=click.IntRange(1, 40), default=12, show_default=True, help="exit kinds to draw")
def plot(path: str, output: str, top: int) -> None:
    """Draw the exits over guest time: one row per exit kind (the most frequent), a tick per exit,
    and below them the exit rate per millisecond of guest time."""
    doc = load(path)
    events = exit_events(doc)
    if not events:
        raise click.ClickException(f"{path} has no exit events")
    try:
        draw(events, output, top, title=path)
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e.strerror or e}") from None
    click.echo(f"wrote {output}")


def draw(events: list[dict], output: str, top: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter(e["name"] for e in events)
    names = [n for n, _ in counts.most_common(top)]
    row = {n: i for i, n in enumerate(names)}
    fig, (ax, rate) = plt.subplots(2, 1, figsize=(11, 6.5), height_ratios=(3, 1.2), sharex=True)
    cmap = plt.get_cmap("tab20")
    for n in names:
        xs = [e["ts"] / 1000 for e in events if e["name"] == n]
        ax.scatter(xs, [row[n]] * len(xs), s=9, marker="|", color=cmap(row[n] % 20), linewidths=0.8)
    ax.set_yticks(range(len(names)), [f"{n} ({counts[n]})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"exits over guest time: {title} ({len(events)} exits)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    end = max(e["ts"] for e in events) / 1000
    bins = max(10, min(400, int(end) + 1))
    kinds = Counter(e["name"].split(":")[0] for e in events)
    data = [[e["ts"] / 1000 for e in events if e["name"].split(":")[0] == k] for k, _ in kinds.most_common(6)]
    rate.hist(data, bins=bins, stacked=True, label=[k for k, _ in kinds.most_common(6)])
    rate.set_ylabel("exits / bin", fontsize=8)
    rate.set_xlabel("guest time (ms)")
    rate.legend(fontsize=7, ncol=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
