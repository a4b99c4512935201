"""The summary table every plugin benchmark prints: figure, collector, baseline, what the baseline is, ratio.

Shared by plugins/*/tests/bench_*.py (they put this directory on ``sys.path``), so their tables read alike.
"""

from __future__ import annotations

from typing import Any


def row(name: str, collector: float, baseline: float | None, baseline_name: str) -> dict[str, Any]:
    """One summary row; the ratio is collector / baseline (None without a baseline)."""
    ratio = collector / baseline if baseline else None
    return {"name": name, "collector": collector, "baseline": baseline, "baseline_name": baseline_name, "ratio": ratio}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def print_summary(title: str, summary: list[dict[str, Any]]) -> None:
    """The rows of ``summary`` as an aligned table under a header whose first cell is ``title``."""
    rows = [(title, "collector", "baseline", "(baseline is)", "ratio")]
    for s in summary:
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}x"
        rows.append((s["name"], fmt(s["collector"]), fmt(s["baseline"]), s["baseline_name"], ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in (1, 2, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells))
        if n == 0:
            print(line)
    print(line)
