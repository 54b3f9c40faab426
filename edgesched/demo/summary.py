"""What the demo observed: a tally of every submission's outcome, and the end-of-run summary."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "failed", "rejected", "expired")
PLACEMENTS = ("local", "neighbour", "cloud")


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Tally:
    """Outcomes as the fleet saw them in replies; one writer (the fleet's reply loop)."""

    submitted: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    placements: Counter[str] = field(default_factory=Counter)  # completed (status ok) only
    by_phase: dict[str, Counter[str]] = field(default_factory=dict)
    by_type: dict[str, Counter[str]] = field(default_factory=dict)
    executed_by: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    deadline_misses: int = 0
    duplicates: int = 0
    malformed: int = 0
    redirected: int = 0
    fallbacks: int = 0  # answered after more than one attempt (a target failed or timed out)
    errors: Counter[str] = field(default_factory=Counter)

    def record(
        self, *, phase: str, task_type: str, status: str, placement: str | None,
        executed_by: str | None, latency_s: float | None, deadline_s: float | None,
        error: str | None = None, attempts: int = 1,
    ) -> None:
        status = status if status in STATUSES else "failed"
        if attempts > 1:
            self.fallbacks += 1
        self.statuses[status] += 1
        if status == "ok":
            where = placement if placement in PLACEMENTS else "unknown"
            self.placements[where] += 1
            self.by_phase.setdefault(phase, Counter())[where] += 1
            self.by_type.setdefault(task_type, Counter())[where] += 1
            if executed_by:
                self.executed_by[executed_by] += 1
            if latency_s is not None and math.isfinite(latency_s):
                self.latencies.append(latency_s)
                if deadline_s is not None and latency_s > deadline_s:
                    self.deadline_misses += 1
        else:
            self.by_phase.setdefault(phase, Counter())[status] += 1
            if status == "expired":
                self.deadline_misses += 1
            if error:
                self.errors[error[:80]] += 1


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """The simulator's verdict on the same cluster and workload: cost policy vs always-local."""

    source: str
    policies: dict[str, dict[str, Any]]
    note: str = ""


def summary_doc(
    tally: Tally, *, lost: int, energy_j: float, duration_s: float, seed: int,
    broker: str, comparison: Comparison | None,
) -> dict[str, Any]:
    """The `--json` document (its first keys are the contract of issue 7)."""
    doc: dict[str, Any] = {
        "tasks": {
            "submitted": tally.submitted,
            "completed": tally.statuses["ok"],
            "failed": tally.statuses["failed"],
            "rejected": tally.statuses["rejected"],
            "expired": tally.statuses["expired"],
            "lost": lost,
        },
        "placements": {p: tally.placements[p] for p in PLACEMENTS},
        "latency_s": {
            "p50": _round(percentile(tally.latencies, 50)),
            "p95": _round(percentile(tally.latencies, 95)),
            "p99": _round(percentile(tally.latencies, 99)),
        },
        "deadline_misses": tally.deadline_misses,
        "energy_j": round(energy_j, 3),
        "duration_s": duration_s,
        "seed": seed,
        "broker": broker,
        "by_phase": {k: dict(v) for k, v in tally.by_phase.items()},
        "by_type": {k: dict(v) for k, v in tally.by_type.items()},
        "executed_by": dict(tally.executed_by),
        "duplicate_replies": tally.duplicates,
        "redirected_submissions": tally.redirected,
        "answered_after_fallback": tally.fallbacks,
    }
    if comparison is not None:
        doc["comparison"] = {"source": comparison.source, "note": comparison.note,
                             "policies": comparison.policies}
    return doc


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(target)
