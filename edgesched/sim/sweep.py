"""`edgesched simulate SCENARIO --sweep KEY=START:STOP:STEP`: every policy at each value of one
numeric scenario key, as EdgeCloudSim's figures show them (miss ratio and mean latency per
policy against, say, the number of devices).

Each (value, policy) pair is one independent run of `run_scenario`, so a sweep spreads over
local processes (`--jobs N`, default the CPU count) or, with `--dask tcp://HOST:PORT`, over an
existing Dask distributed cluster (the optional extra `dask`). The results do not depend on
where a run happened: same scenario, seed and policy, same numbers.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgesched.errors import EdgeschedError, UsageError
from edgesched.sim.runner import check_policies, run_scenario
from edgesched.sim.scenario import _Loader, load_scenario

MAX_SWEEP_POINTS = 200  # values per sweep: a typo like 1:100000:1 is refused, not run
DASK_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class SweepSpec:
    key: str  # dotted path into the scenario, e.g. "devices" or "cloud.bandwidth_bps"
    values: tuple[float, ...]


def parse_sweep(text: str) -> SweepSpec:
    """`KEY=START:STOP:STEP` (STOP included when the steps land on it)."""
    key, sep, rng = text.partition("=")
    parts = rng.split(":")
    if not sep or not key.strip() or len(parts) != 3:
        raise UsageError(f"--sweep {text!r}: expected KEY=START:STOP:STEP, "
                         "e.g. devices=200:2400:200")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--sweep {text!r}: START, STOP and STEP must be numbers") from None
    if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0 or stop < start:
        raise UsageError(f"--sweep {text!r}: needs finite numbers, STEP > 0 and STOP >= START")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_SWEEP_POINTS:
        raise UsageError(f"--sweep {text!r}: {count} values; at most {MAX_SWEEP_POINTS}")
    values = tuple(_tidy(start + i * step) for i in range(count))
    return SweepSpec(key=key.strip(), values=values)


def _tidy(x: float) -> float:
    return float(round(x, 9))


def set_key(raw: Mapping[str, Any], key: str, value: float) -> dict[str, Any]:
    """A copy of the scenario mapping with the numeric `key` (dotted; list items by index)
    set to `value`. A key naming a block with a `count` (e.g. `devices`) sets its count.
    An integer key stays an integer (the value must then be whole)."""
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    parts = key.split(".")
    parent: Any = data
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(parent, list):
            if not part.isdigit() or int(part) >= len(parent):
                raise UsageError(f"--sweep: {where!r}: no such list item in the scenario")
            index: Any = int(part)
        elif isinstance(parent, dict):
            if part not in parent:
                raise UsageError(f"--sweep: {where!r} is not in the scenario")
            index = part
        else:
            raise UsageError(f"--sweep: {where!r}: the scenario has no block there")
        if not last:
            parent = parent[index]
            continue
        current = parent[index]
        if isinstance(current, dict) and "count" in current:
            parent, index, current = current, "count", current["count"]
        if isinstance(current, bool) or not isinstance(current, int | float):
            raise UsageError(f"--sweep: {where!r} is not a number in the scenario")
        if isinstance(current, int):
            if value != int(value):
                raise UsageError(f"--sweep: {where!r} is an integer; {value:g} is not")
            parent[index] = int(value)
        else:
            parent[index] = float(value)
    return data


def read_scenario_mapping(path: str | Path) -> dict[str, Any]:
    """The scenario file as a plain mapping (validated later, once per swept value)."""
    load_scenario(path)  # every problem of the file itself, reported as usual
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_Loader)  # a SafeLoader subclass
    data.setdefault("name", Path(path).stem)
    return dict(data)


def _run_point(args: tuple[dict[str, Any], str, int | None]) -> dict[str, Any]:
    """One policy at one swept value (runs in a worker process or on a Dask worker)."""
    raw, policy, seed = args
    report = run_scenario(raw, [policy], seed)
    summary: dict[str, Any] = dict(report["policies"][policy])
    summary["tasks"] = report["tasks"]
    summary["seed"] = report["seed"]
    return summary


def run_sweep(
    raw: Mapping[str, Any],
    spec: SweepSpec,
    policies: Sequence[str] | None = None,
    seed: int | None = None,
    *,
    jobs: int | None = None,
    dask_address: str | None = None,
    on_point: Callable[[float, str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every policy at every value; the sweep report as a plain dict (see `--json`)."""
    names = check_policies(policies)
    scenarios = {v: set_key(raw, spec.key, v) for v in spec.values}
    for value, data in scenarios.items():  # all invalid values reported before any run
        try:
            load_scenario(data)
        except EdgeschedError as exc:
            raise UsageError(f"--sweep: {spec.key}={value:g} makes the scenario invalid: "
                             f"{exc}") from None
    work = [((value, name), (scenarios[value], name, seed))
            for value in spec.values for name in names]
    results: dict[tuple[float, str], dict[str, Any]] = {}
    runs = _run_on_dask(work, dask_address) if dask_address else _run_local(work, jobs)
    for key, summary in runs:
        results[key] = summary
        if on_point is not None:
            on_point(key[0], key[1], summary)
    points = []
    for value in spec.values:
        per = {n: results[(value, n)] for n in names}
        first = per[names[0]]
        points.append({"value": value, "tasks": first.pop("tasks"),
                       "policies": {n: {k: v for k, v in s.items() if k not in ("tasks", "seed")}
                                    for n, s in per.items()}})
        seed_used = first["seed"]
    return {"scenario": str(raw.get("name", "scenario")), "seed": seed_used, "key": spec.key,
            "values": list(spec.values), "policies": names, "points": points}


Work = list[tuple[tuple[float, str], tuple[dict[str, Any], str, int | None]]]


def _run_local(work: Work, jobs: int | None) -> Iterable[tuple[tuple[float, str],
                                                               dict[str, Any]]]:
    jobs = max(1, jobs or os.cpu_count() or 1)
    if jobs == 1 or len(work) == 1:
        for key, args in work:
            yield key, _run_point(args)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
        futures = {pool.submit(_run_point, args): key for key, args in work}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def _run_on_dask(work: Work, address: str) -> Iterable[tuple[tuple[float, str],
                                                             dict[str, Any]]]:
    try:
        import distributed
    except ImportError:
        raise UsageError("--dask needs Dask distributed: pip install 'edgesched[dask]'") from None
    dask: Any = distributed  # untyped
    try:
        client = dask.Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise EdgeschedError(f"--dask {address}: cannot reach the Dask scheduler "
                             f"({exc.__class__.__name__}: {exc})") from None
    try:
        futures = {client.submit(_run_point, args, pure=False, key=f"edgesched-sweep-{i}"): key
                   for i, (key, args) in enumerate(work)}
        for fut in dask.as_completed(list(futures)):
            yield futures[fut], fut.result()
    finally:
        client.close()


def sweep_lines(report: dict[str, Any]) -> list[str]:
    """A plain table: one row per value, miss % and mean latency per policy."""
    names = report["policies"]
    head = f"{report['key']:>12} " + " ".join(f"{n:>22}" for n in names)
    lines = [f"sweep of {report['key']} on {report['scenario']} (seed {report['seed']}): "
             "miss % · mean s per policy", head]
    for point in report["points"]:
        cells = []
        for n in names:
            s = point["policies"][n]
            mean = s["mean_latency_s"]
            cells.append(f"{100 * s['deadline_miss_ratio']:9.2f} · "
                         f"{'-' if mean is None else f'{mean:.3f}':>8}")
        lines.append(f"{point['value']:>12g} " + " ".join(f"{c:>22}" for c in cells))
    return lines


def plot_sweep(report: dict[str, Any], path: Path) -> None:
    """Two panels against the swept value, one line per policy: miss ratio and mean latency."""
    from edgesched.sim.plot import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = report["values"]
    fig, (miss_ax, lat_ax) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    fig.suptitle(f"{report['scenario']}: sweep of {report['key']} (seed {report['seed']})")
    for i, name in enumerate(report["policies"]):
        rows = [p["policies"][name] for p in report["points"]]
        # Markers and dashes differ per policy, so curves that coincide stay visible.
        style = {"marker": "osD^vPX*"[i % 8], "linestyle": ("-", "--", "-.", ":")[i % 4],
                 "label": name, "markersize": 7 - (i % 4)}
        miss_ax.plot(xs, [100 * r["deadline_miss_ratio"] for r in rows], **style)
        lat_ax.plot(xs, [r["mean_latency_s"] if r["mean_latency_s"] is not None else math.nan
                         for r in rows], **style)
    miss_ax.set(xlabel=report["key"], ylabel="deadline misses and failures (% of submitted)",
                title="miss ratio")
    miss_ax.set_ylim(bottom=0.0, top=max(1.0, miss_ax.get_ylim()[1]))
    lat_ax.set(xlabel=report["key"], ylabel="mean latency of completed tasks (s)",
               title="mean latency")
    for ax in (miss_ax, lat_ax):
        ax.grid(alpha=0.3)
    lat_ax.legend(fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_command(args: Any) -> int:
    """`edgesched simulate SCENARIO --sweep ...` (called by sim/command.py)."""
    spec = parse_sweep(args.sweep)
    if args.plot_path:
        from edgesched.sim.plot import require_matplotlib

        require_matplotlib()
    raw = read_scenario_mapping(args.scenario)
    total = len(spec.values) * len(check_policies(args.policies))
    done = [0]

    def progress(value: float, policy: str, summary: dict[str, Any]) -> None:
        done[0] += 1
        print(f"[{done[0]}/{total}] {spec.key}={value:g} {policy}: "
              f"miss {100 * summary['deadline_miss_ratio']:.2f} %", file=sys.stderr)

    report = run_sweep(raw, spec, args.policies, args.seed, jobs=args.jobs,
                       dask_address=args.dask, on_point=progress)
    for line in sweep_lines(report):
        print(line)
    if args.json_path:
        _write(Path(args.json_path), json.dumps(report, indent=2) + "\n")
        print(f"sweep written to {args.json_path}")
    if args.plot_path:
        plot_sweep(report, Path(args.plot_path))
        print(f"plot written to {args.plot_path}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise EdgeschedError(f"cannot write {path}: {exc.strerror}") from None
