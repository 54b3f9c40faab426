"""`--plot`: one PNG comparing policies (latency percentiles, deadline misses, energy, placement).

matplotlib is an optional extra (`pip install 'edgesched[plot]'`); without it `--plot` fails
up front with a message saying so, before any simulation time is spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesched.errors import EdgeschedError

PLACEMENT_COLOURS = {"local": "#4C72B0", "neighbour": "#55A868", "cloud": "#C44E52"}


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeschedError(
            "--plot needs matplotlib: pip install 'edgesched[plot]' (or drop --plot)"
        ) from None


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Write a 2x2 figure: latency (p50/p95/p99 + mean), miss ratio, energy, placements."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    pols = report["policies"]
    names = list(pols)
    x = list(range(len(names)))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    fig.suptitle(f"scenario {report['scenario']}: seed {report['seed']}, "
                 f"{report['tasks']} tasks per policy")
    _latency(axes[0][0], pols, names, x)
    _bars(axes[0][1], x, [100 * pols[n]["deadline_miss_ratio"] for n in names], names,
          "deadline misses (% of submitted tasks)", "#8172B2")
    _bars(axes[1][0], x, [pols[n]["energy_j_per_task"] for n in names], names,
          "edge energy per submitted task (J)", "#CCB974")
    _placements(axes[1][1], pols, names, x)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise EdgeschedError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)


def _highlight(ax: Any, names: list[str]) -> None:
    for label in ax.get_xticklabels():
        if label.get_text() == "cost":
            label.set_fontweight("bold")


def _latency(ax: Any, pols: dict[str, Any], names: list[str], x: list[int]) -> None:
    width = 0.27
    for k, (key, label) in enumerate((("p50_latency_s", "p50"), ("p95_latency_s", "p95"),
                                      ("p99_latency_s", "p99"))):
        vals = [1e3 * (pols[n][key] or 0.0) for n in names]
        ax.bar([i + (k - 1) * width for i in x], vals, width, label=label)
    ax.plot(x, [1e3 * (pols[n]["mean_latency_s"] or 0.0) for n in names], "k_", ms=14,
            mew=2, label="mean", linestyle="none")
    ax.set_title("latency of completed tasks (ms)")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.legend(fontsize=8)
    _highlight(ax, names)


def _bars(ax: Any, x: list[int], vals: list[float], names: list[str], title: str,
          colour: str) -> None:
    ax.bar(x, vals, color=colour)
    ax.set_title(title)
    ax.set_xticks(x, names, rotation=35, ha="right")
    _highlight(ax, names)


def _placements(ax: Any, pols: dict[str, Any], names: list[str], x: list[int]) -> None:
    bottom = [0.0] * len(names)
    for where, colour in PLACEMENT_COLOURS.items():
        vals = []
        for n in names:
            pl = pols[n]["placements"]
            done = sum(pl.values()) or 1
            vals.append(100.0 * pl[where] / done)
        ax.bar(x, vals, bottom=bottom, color=colour, label=where)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_title("where completed tasks ran (%)")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.legend(fontsize=8)
    _highlight(ax, names)
