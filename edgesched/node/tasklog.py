"""The recent-task store behind `GET /v1/tasks/{id}`: "why did task X go to the cloud?".

Each finished task's trace (its outcome, every candidate with its prediction and rejection
reason, the chosen target and its score, each attempt with its timings; node/trace.py) is
kept as its record line, the JSON the pipeline encodes once for every trace sink, newest
last; the oldest are dropped once the store passes `http.recent_tasks_bytes` (each counted
at its length plus ENTRY_OVERHEAD_BYTES). The record a lookup returns is built from the line
only then (`task_record`), so a finished task costs the event loop a dict insertion. Bytes
are also nothing the garbage collector walks: kept as objects, the traces of the last few
seconds made up most of what each full collection traversed in a busy node (10-15 ms pauses
every 2-3 s at 2,000 tasks/s). A task larger than a quarter of the store is kept as a
cut-down record (its candidates and attempts first), so one huge task cannot evict every
other one.

The store is a sink of finished tasks; it only reads what it is given and never blocks.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson

from edgesched.node import protocol as p

DEFAULT_MAX_BYTES = 8 << 20  # ~3,800 tasks of 3 candidates, ~1,850 of 9 (bench_tasklog.py)
MAX_ENTRIES = 20_000
# an entry beside its line: the id (81 B for 32 characters), the dict slot, the entry, the
# bytes object's header (~330 B measured with tracemalloc)
ENTRY_OVERHEAD_BYTES = 350
MAX_CANDIDATES = 64  # per record: a big cluster's candidate list is cut, and says so
MAX_ATTEMPTS = 16
MAX_TEXT_CHARS = 600  # an error message in a record
STATUS_TASKS = 20  # the newest tasks /v1/status lists (recent_tasks.last)
SUMMARY_KEYS = ("id", "type", "outcome", "placement", "executed_by", "latency_s")


def valid_task_id(task_id: str) -> bool:
    """The intake's id rule: a printable string of 1..MAX_ID_CHARS characters."""
    return 0 < len(task_id) <= p.MAX_ID_CHARS and task_id.isprintable()


def _clean(value: Any) -> Any:
    """JSON-able: NaN/inf -> None, tuples -> lists, floats rounded to the microsecond."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        return value[:MAX_TEXT_CHARS] + "..."
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _text(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        return value[:MAX_TEXT_CHARS] + "..."
    return value


def _why(chosen: str | None, score: Any, candidates: list[dict[str, Any]], role: str) -> str:
    """One sentence: why the chosen target, and why not each other candidate."""
    if role == "cloud" and not candidates:
        return "the cloud tier runs what an edge node sends it: no decision here"
    if not candidates:
        return "no decision was made (the task ended before one)"
    feasible = [c for c in candidates if c.get("feasible")]
    rejected = [f"{c.get('node_id')} ({c.get('reason') or 'infeasible'})"
                for c in candidates if not c.get("feasible")]
    if chosen is None:
        head = "no candidate was feasible"
    else:
        of = f"among {len(feasible)} feasible candidate(s)" if feasible else "as a last resort"
        head = f"{chosen} had the lowest score ({score if score is not None else '-'}) {of}"
    return head + (f"; not feasible: {', '.join(rejected)}" if rejected else "")


def task_record(trace: Mapping[str, Any]) -> dict[str, Any]:
    """The `GET /v1/tasks/{id}` document (docs/contract.md) of one task trace, in its record
    form (`TaskTrace.to_dict()`, node/trace.py)."""
    cands = [
        {key: c.get(key) for key in (
            "node_id", "placement", "feasible", "score", "latency_mean_s", "latency_q_s",
            "energy_j", "reason", "liveness", "age_s", "slots", "running", "queued",
            "est_wait_s", "exec_mean_s", "exec_std_s", "rtt_s", "bandwidth_bps", "battery")}
        for c in (trace.get("candidates") or [])[:MAX_CANDIDATES]]
    attempts = [
        {"target": a.get("node_id"), "placement": a.get("placement"),
         "result": a.get("outcome"), "started_after_s": a.get("started_s"),
         "duration_s": a.get("duration_s"), "wait_s": a.get("wait_s"),
         "exec_s": a.get("exec_s"), "exchange_s": a.get("exchange_s"),
         "executed_by": a.get("executed_by"), "error": a.get("error")}
        for a in (trace.get("attempts") or [])[:MAX_ATTEMPTS]]
    role = str(trace.get("role") or "edge")
    chosen, score = trace.get("chosen"), trace.get("chosen_score")
    doc = {
        "id": trace.get("id"), "type": trace.get("type"), "node_id": trace.get("origin"),
        "role": role, "outcome": trace.get("status"), "error": _text(trace.get("error")),
        "placement": trace.get("placement"), "executed_by": trace.get("executed_by"),
        "latency_s": trace.get("latency_s"), "deadline_s": trace.get("deadline_s"),
        "deadline_missed": trace.get("deadline_missed"),
        "arrived_unix_s": trace.get("arrived_unix_s"), "work": trace.get("work"),
        "input_bytes": trace.get("input_bytes"), "priority": trace.get("priority"),
        "device_id": trace.get("device_id"), "regret_s": trace.get("regret_s"),
        "decision": {
            "policy": trace.get("policy"), "chosen": chosen, "score": score,
            "decided_after_s": trace.get("decided_s"), "propensity": trace.get("propensity"),
            "explored": trace.get("explored"),
            "why": _why(chosen, score, cands, role),
        },
        "candidates": cands,
        "attempts": attempts,
    }
    total = len(trace.get("candidates") or [])
    if total > len(cands):
        doc["candidates_total"] = total
    return doc


class TaskLog:
    """Recent finished tasks by id, bounded in bytes (and in entries).

    `on_task_finished(trace, line)` (the trace sink) keeps a finished task's record line as
    it is: the hot path costs a dict insertion, and the record is built only when someone
    looks it up. `record(doc)` keeps a ready record (a mapping with a string `id`) encoded.
    Each counts at its length plus ENTRY_OVERHEAD_BYTES.

    A later task with the same id replaces the earlier one; `get(task_id)` returns the record
    (`task_record`), or None once evicted; `recent(n)` lists the newest first.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = MAX_ENTRIES,
                 clock: Any = time.time) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        # id -> (JSON, its cost in bytes, when it was recorded, whether the JSON is a trace's
        # record line (task_record builds the lookup from it) or a ready record)
        self._entries: OrderedDict[str, tuple[bytes, int, float, bool]] = OrderedDict()
        self._clock = clock
        self.bytes = 0
        self.recorded = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def on_task_finished(self, trace: Any, line: bytes | None) -> None:
        """The trace sink (node/trace.py `TraceSink`): keep this finished task's line."""
        if self.max_bytes <= 0:
            return
        cost = len(line) + ENTRY_OVERHEAD_BYTES if line is not None else 0
        if line is None or cost > self._limit():  # a cut-down record instead, made JSON-able
            self.record(task_record(trace.to_dict()))
            return
        self._put(trace.id, line, cost, True)

    def record(self, doc: Mapping[str, Any]) -> None:
        """Keep one finished task's ready record (the oldest go when the store is full)."""
        if self.max_bytes <= 0:
            return
        task_id = doc.get("id")
        if not isinstance(task_id, str) or not task_id:
            return
        data = self._encode(dict(doc))
        self._put(task_id, data, len(data) + ENTRY_OVERHEAD_BYTES, False)

    def _limit(self) -> int:
        return max(1024, self.max_bytes // 4)

    def _put(self, task_id: str, data: bytes, cost: int, is_line: bool) -> None:
        old = self._entries.pop(task_id, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[task_id] = (data, cost, self._clock(), is_line)
        self.bytes += cost
        self.recorded += 1
        while self._entries and (self.bytes > self.max_bytes
                                 or len(self._entries) > self.max_entries):
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped[1]
            self.evicted += 1

    def _encode(self, body: dict[str, Any]) -> bytes:
        try:  # a record built from a trace is JSON-ready: the fast path
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):  # NaN/inf, or a value JSON has no form for
            body = _clean(body)
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        limit = self._limit()
        if len(data) <= limit:
            return data
        # too big for its share of the store: keep what says most, drop the rest (and say so)
        cut = dict(body, truncated=True)
        for key, keep in (("candidates", 8), ("attempts", 4)):
            items = cut.get(key)
            if isinstance(items, list) and len(items) > keep:
                cut[key] = items[:keep]
        data = json.dumps(_clean(cut), separators=(",", ":"), allow_nan=False).encode("utf-8")
        if len(data) <= limit:
            return data
        kept = ("id", "type", "node_id", "outcome", "placement", "executed_by", "latency_s")
        summary: dict[str, Any] = {k: cut[k] for k in kept if k in cut}
        summary["truncated"] = True
        return json.dumps(_clean(summary), separators=(",", ":")).encode("utf-8")

    def _decode(self, entry: tuple[bytes, int, float, bool]) -> dict[str, Any]:
        data, _, at, is_line = entry
        # a ready record is the json module's (it escapes what orjson will not read back)
        doc = task_record(orjson.loads(data)) if is_line else dict(json.loads(data))
        doc.setdefault("recorded_at", round(at, 3))
        return doc

    def get(self, task_id: str) -> dict[str, Any] | None:
        entry = self._entries.get(task_id)
        return None if entry is None else self._decode(entry)

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        """The `n` most recently finished tasks, newest first."""
        out: list[dict[str, Any]] = []
        for key in reversed(self._entries):
            if len(out) >= n:
                break
            out.append(self._decode(self._entries[key]))
        return out

    def summaries(self, n: int = STATUS_TASKS) -> list[dict[str, Any]]:
        """One line for each of the `n` most recently finished tasks, newest first."""
        out: list[dict[str, Any]] = []
        for key in reversed(self._entries):
            if len(out) >= n:
                break
            data, _, at, is_line = self._entries[key]
            doc = orjson.loads(data) if is_line else json.loads(data)
            if is_line:  # a trace's record form
                line = {"id": doc.get("id"), "type": doc.get("type"),
                        "outcome": doc.get("status"), "placement": doc.get("placement"),
                        "executed_by": doc.get("executed_by"),
                        "latency_s": doc.get("latency_s"), "chosen": doc.get("chosen")}
            else:
                line = {k: doc.get(k) for k in SUMMARY_KEYS}
                line["chosen"] = (doc.get("decision") or {}).get("chosen")
            line["age_s"] = round(max(0.0, self._clock() - at), 3)
            out.append(_clean(line))
        return out

    def stats(self) -> dict[str, Any]:
        """The `recent_tasks` section of /v1/status: the store's size and its newest tasks."""
        return {"tasks": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "recorded": self.recorded, "evicted": self.evicted,
                "last": self.summaries()}
