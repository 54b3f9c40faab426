"""`edgesched simulate`: run policies over a scenario, print the comparison, write JSON/PNG."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgesched.errors import EdgeschedError, UsageError
from edgesched.sim.report import comparison_lines, table_rows
from edgesched.sim.runner import check_policies, run_scenario
from edgesched.sim.scenario import load_scenario

LONG_RUN_TASKS = 50_000  # show a progress bar past this many task-runs even off a terminal
PARALLEL_TASK_RUNS = 200_000  # past this many task-runs, use a process per core


@contextmanager
def _progress(total_runs: int, n_policies: int) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr, when stderr is a terminal or the run is long."""
    if not (sys.stderr.isatty() or total_runs * n_policies >= LONG_RUN_TASKS):
        yield lambda name, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        ids: dict[str, Any] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in ids:
                ids[name] = bar.add_task(name, total=total)
            bar.update(ids[name], completed=done)

        yield update


def print_report(report: dict[str, Any], elapsed_s: float) -> None:
    """The comparison table (rich when available) and the cost policy's ratios, to stdout."""
    from rich.console import Console
    from rich.table import Table

    rows = table_rows(report)
    table = Table(title=f"scenario {report['scenario']} · seed {report['seed']} · "
                        f"{report['tasks']} tasks", title_justify="left")
    for i, head in enumerate(rows[0]):
        table.add_column(head, justify="left" if i in (0, 8, 9) else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console = Console(width=max(120, Console().width))
    console.print(table)
    for line in comparison_lines(report):
        console.print(line, highlight=False)
    console.print(f"[dim]simulated in {elapsed_s:.1f}s[/dim]")


def simulate_command(args: argparse.Namespace) -> int:
    """Entry point of `edgesched simulate` (see contract §1 and docs/simulator.md)."""
    if getattr(args, "generate", None):
        from edgesched.sim.generate import generate_command

        return generate_command(args)
    if not args.scenario:
        raise UsageError("simulate needs a scenario file (or --generate FAMILY)")
    if getattr(args, "sweep", None):
        from edgesched.sim.sweep import sweep_command

        return sweep_command(args)
    scenario = load_scenario(args.scenario)
    policies = check_policies(args.policies)
    if args.plot_path:
        from edgesched.sim.plot import require_matplotlib

        require_matplotlib()
    started = time.perf_counter()
    expected = _expected_tasks(scenario)
    # Long comparisons run policies side by side on the available cores.
    workers = min(os.cpu_count() or 1, len(policies)) if expected * len(policies) >= (
        PARALLEL_TASK_RUNS) else 1
    with _progress(expected, len(policies)) as progress:
        report = run_scenario(scenario, policies, args.seed, on_progress=progress,
                              workers=workers)
    print_report(report, time.perf_counter() - started)
    if args.json_path:
        _write(Path(args.json_path), json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json_path}")
    if args.plot_path:
        from edgesched.sim.plot import plot_report

        plot_report(report, Path(args.plot_path))
        print(f"plot written to {args.plot_path}")
    return 0


def _expected_tasks(scenario: Any) -> int:
    total = 0.0
    for arr in scenario.arrivals:
        rate = max(arr.rate_per_s, arr.burst_rate_per_s)
        total += rate * scenario.duration_s
    return int(total)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise EdgeschedError(f"cannot write {path}: {exc.strerror}") from None
