"""The end-of-run summary as the terminal shows it (rich tables; plain text when piped)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from edgesched.demo.summary import PLACEMENTS

_OUTCOMES = ("ok", "failed", "rejected", "expired")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}{unit}"
    return f"{value}{unit}"


def _phase_table(doc: dict[str, Any]) -> Table:
    table = Table(title="completed tasks by placement, per phase (and unsuccessful outcomes)")
    table.add_column("phase")
    for col in (*PLACEMENTS, "failed", "rejected", "expired"):
        table.add_column(col, justify="right")
    for phase, counts in doc["by_phase"].items():
        table.add_row(phase, *(str(counts.get(c, 0)) for c in
                               (*PLACEMENTS, "failed", "rejected", "expired")))
    table.add_row("all", *(str(doc["placements"][p]) for p in PLACEMENTS),
                  str(doc["tasks"]["failed"]), str(doc["tasks"]["rejected"]),
                  str(doc["tasks"]["expired"]), style="bold")
    return table


def _comparison_table(comparison: dict[str, Any]) -> Table:
    table = Table(title=f"cost policy vs always-local — from the {comparison['source']}")
    table.add_column("policy")
    for col in ("completed", "p50 s", "p95 s", "deadline miss", "energy J/task",
                "local/neighbour/cloud"):
        table.add_column(col, justify="right")
    for name, row in comparison["policies"].items():
        placements = row.get("placements", {})
        table.add_row(
            name, _fmt(row.get("completed")), _fmt(row.get("p50_latency_s")),
            _fmt(row.get("p95_latency_s")), _pct(row.get("deadline_miss_ratio")),
            _fmt(row.get("energy_j_per_task")),
            "/".join(str(placements.get(p, 0)) for p in PLACEMENTS),
        )
    return table


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def print_summary(doc: dict[str, Any], notes: list[str], console: Console | None = None) -> None:
    # Piped output (CI logs) is not limited to 80 columns: the tables stay readable.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    tasks = doc["tasks"]
    console.rule("edgesched demo — summary")
    console.print(f"broker: {doc['broker']}   duration: {doc['duration_s']:.0f}s   "
                  f"seed: {doc['seed']}" + ("   (interrupted)" if doc.get("interrupted") else ""))
    console.print(
        f"tasks: submitted {tasks['submitted']}, completed {tasks['completed']}, "
        f"failed {tasks['failed']}, rejected {tasks['rejected']}, expired {tasks['expired']}, "
        f"lost {tasks['lost']} (no terminal reply)")
    console.print("completed on: " + ", ".join(
        f"{p} {doc['placements'][p]}" for p in PLACEMENTS))
    lat = doc["latency_s"]
    console.print(f"latency of completed tasks: p50 {_fmt(lat['p50'], ' s')}, "
                  f"p95 {_fmt(lat['p95'], ' s')}, p99 {_fmt(lat['p99'], ' s')}; "
                  f"deadline misses {doc['deadline_misses']}; "
                  f"edge energy {doc['energy_j']:.1f} J (from the nodes' /metrics)")
    console.print(f"answered after a fallback (more than one attempt): "
                  f"{doc['answered_after_fallback']}; submissions of roaming devices: "
                  f"{doc['redirected_submissions']}")
    console.print(_phase_table(doc))
    comparison = doc.get("comparison")
    if comparison and comparison.get("policies"):
        console.print(_comparison_table(comparison))
        if comparison.get("note"):
            console.print(f"({comparison['note']})")
    elif comparison:
        console.print(f"cost vs always-local: {comparison.get('note') or 'not available'}")
    for note in notes:
        console.print(f"note: {note}")
