"""`edgesched replay RECORD_DIR`: a recorded node's own traffic through the simulator.

A recording (`record.path`, written by adapters/recorder.py; format in docs/replay.md) holds
every finished task of a node — arrival, type, size, deadline, every candidate the decision
saw, each attempt's measured timings, the outcome — and periodic snapshots of what the node
knew of its neighbours and links. The replay:

1. reads it (`read_recording`): a malformed line, a truncated or foreign file is skipped with
   a message naming the file and the line, never a crash;
2. fits a model of the site to it (`fit`): the arrivals are the recorded ones (same times,
   types, sizes, deadlines); each task's work is what its execution *measured*, scaled by the
   speed of the node it ran on relative to the recording node (speeds from the measured
   execution times of the same task type, else the node's own estimates at decision time);
   links from the measured network time of the remote attempts (the attempt's round trip
   minus the target's queueing and execution), else the node's link estimates;
3. runs the chosen policies over exactly those tasks (`replay`), plus the `oracle` — the
   hindsight oracle: each task placed on the target that is fastest given the execution
   times that actually happened and the true state of every queue and link — and reports
   them beside the recorded policy's actual figures (`observed`); `regret_s` is a mean
   latency above the oracle's.

`emit_scenario` writes the fitted model as a scenario YAML (arrival rates, task mix, fitted
execution-time distributions, links) for `edgesched simulate` and sweeps.

The simulator imports no adapter or runtime module, so the record lines are read here as plain
JSON (the fields of node/trace.py `TaskTrace.to_dict`).
"""

from __future__ import annotations

import gzip
import heapq
import itertools
import json
import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgesched.core.costmodel import CostParams
from edgesched.core.exploration import ExploringPolicy
from edgesched.core.model import (
    Candidate,
    ExecEstimate,
    LinkEstimate,
    Liveness,
    Placement,
    TaskSpec,
)
from edgesched.core.policies import make_policy
from edgesched.errors import UsageError
from edgesched.sim.engine import Engine, RunRecord
from edgesched.sim.report import policy_summary
from edgesched.sim.runner import _brain_factory, check_policies
from edgesched.sim.scenario import CLOUD_ID, Scenario, load_scenario
from edgesched.sim.workload import TaskStream

TRACE_VERSION = 1
MAX_PROBLEMS_PER_FILE = 5
DEFAULT_LAN = {"rtt_s": 0.005, "bandwidth_bps": 1e8}
DEFAULT_WAN = {"rtt_s": 0.05, "bandwidth_bps": 2e7}
MIN_RTT_S = 0.0002
MAX_IDLE_S = 60.0  # a longer pause between arrivals is replayed as this long
MAX_TASKS = 200_000  # the most recent tasks a replay reads (~3 kB each in memory)
MAX_TELEMETRY = 20_000  # ... and telemetry lines
_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")


# -- reading ------------------------------------------------------------------------------------

@dataclass
class Recording:
    """What a record directory holds: task lines (sorted by arrival) and telemetry lines."""

    directory: Path
    tasks: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    problems: list[str] = field(default_factory=list)  # "file:line: what", one per skip


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PLACEMENTS = ("local", "neighbour", "cloud")
MAX_VALUE = 1e12  # no size, time or count in a record is larger


def _bad_numbers(doc: dict[str, Any], keys: Sequence[str], *, optional: bool,
                 positive: bool = False) -> str | None:
    """Which of `keys` is not a finite number in [0, MAX_VALUE] (> 0 with `positive`)."""
    for key in keys:
        value = doc.get(key)
        if value is None and optional:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not (
                0 <= value <= MAX_VALUE) or (positive and value <= 0):
            return f"{key!r} is {value!r}: not a number in range"
    return None


def _bad_strings(doc: dict[str, Any], keys: Sequence[str], *, ids: bool = False) -> str | None:
    for key in keys:
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key!r} is not a string"
        if ids and (value is None or not _ID_RE.fullmatch(value)):
            return f"{key!r} is {value!r}: not a node or type name"
    return None


def _check_task(doc: dict[str, Any]) -> str | None:
    """Why `doc` is not a usable task line (None when it is): every field the replay reads
    has its type and range checked, so a damaged line is skipped, never a crash later."""
    if doc.get("v") != TRACE_VERSION:
        return f"task line of version {doc.get('v')!r}; this edgesched reads {TRACE_VERSION}"
    why = ((None if isinstance(doc.get("id"), str) else "'id' missing or not a string")
           or _bad_strings(doc, ("type", "origin"), ids=True)
           or _bad_strings(doc, ("status", "policy", "chosen", "role", "executed_by"))
           or _bad_numbers(doc, ("arrived_unix_s", "work", "input_bytes", "output_bytes"),
                           optional=False)
           or _bad_numbers(doc, ("deadline_s",), optional=True, positive=True)
           or _bad_numbers(doc, ("latency_s", "exact_s", "energy_j", "regret_s",
                                 "propensity"), optional=True)
           or (None if doc.get("decided_s") is None or _num(doc["decided_s"])
               else "'decided_s' is not a number"))
    if why:
        return why
    if doc.get("placement") is not None and doc["placement"] not in PLACEMENTS:
        return f"'placement' is {doc['placement']!r}"
    for key in ("candidates", "attempts"):
        items = doc.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return f"{key!r} is not a list of objects"
    for a in doc.get("attempts", []):
        why = (_bad_strings(a, ("node_id",), ids=True) or _bad_strings(a, ("outcome",))
               or _bad_numbers(a, ("duration_s", "wait_s", "exec_s", "exchange_s"),
                               optional=False)
               or _bad_numbers(a, ("started_s",), optional=True))
        if why or a.get("placement") not in PLACEMENTS:
            return f"an attempt: {why or 'no placement'}"
    for c in doc.get("candidates", []):
        why = (_bad_strings(c, ("node_id",), ids=True)
               or _bad_strings(c, ("liveness", "reason"))
               or _bad_numbers(c, ("slots", "running", "queued", "est_wait_s", "wait_std_s",
                                   "exec_mean_s", "exec_std_s", "age_s", "rtt_s", "rtt_std_s",
                                   "bandwidth_bps", "bandwidth_std_bps", "battery"),
                               optional=True))
        if why or c.get("placement") not in PLACEMENTS:
            return f"a candidate: {why or 'no placement'}"
        if c.get("bandwidth_bps") is not None and c["bandwidth_bps"] <= 0:
            return "a candidate: bandwidth_bps <= 0"
        for key in ("slots", "running", "queued"):
            if c.get(key) is not None and not isinstance(c[key], int):
                return f"a candidate: {key!r} is not an integer"
    return None


def _check_telemetry(doc: dict[str, Any]) -> str | None:
    """Why `doc` is not a usable telemetry line (None when it is)."""
    if doc.get("v") != TRACE_VERSION:
        return f"telemetry line of version {doc.get('v')!r}"
    why = (_bad_strings(doc, ("node",), ids=True)
           or _bad_numbers(doc, ("t_unix_s",), optional=True)
           or _bad_numbers(doc, ("telemetry_interval_s",), optional=True, positive=True))
    if why:
        return why
    if doc.get("explore") is not None and not (_num(doc["explore"]) and 0 <= doc["explore"] <= 1):
        return "'explore' is not in [0, 1]"
    local = doc.get("local", {})
    neighbours = doc.get("neighbours", [])
    links = doc.get("links", {})
    if not isinstance(local, dict) or not isinstance(neighbours, list) or not isinstance(
            links, dict) or not isinstance(doc.get("policy", {}), dict):
        return "local, neighbours, links or policy of the wrong type"
    if _bad_numbers(local, ("slots",), optional=True, positive=True) or _bad_numbers(
            local, ("speed",), optional=True, positive=True):
        return "local slots or speed out of range"
    for n in neighbours:
        if not isinstance(n, dict) or _bad_strings(n, ("node_id",), ids=True) or _bad_numbers(
                n, ("slots", "speed"), optional=True, positive=True):
            return "a neighbour without a valid node_id, slots or speed"
    for target, link in links.items():
        if not isinstance(link, dict) or _bad_numbers(link, ("rtt_s",), optional=False) or (
                _bad_numbers(link, ("bandwidth_bps",), optional=False, positive=True)):
            return f"the link to {target!r} is not an rtt_s and a bandwidth_bps"
    return None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a gzip'd or plain file; EOFError/OSError/zlib.error on a
    truncated or broken gzip stream (after the lines before it)."""
    with path.open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: Any = gzip.GzipFile(fileobj=raw) if gz else raw
        yield from enumerate(stream, start=1)


def read_recording(directory: str | Path, warn: Callable[[str], None] | None = None, *,
                   max_tasks: int = MAX_TASKS) -> Recording:
    """Every usable line of every file in `directory` (UsageError if it is not a directory
    or holds no task at all), at most the `max_tasks` most recent tasks (and MAX_TELEMETRY
    telemetry lines): memory stays bounded whatever the directory holds. Problems are
    collected (and passed to `warn`) as `file:line: message`; a file that is not a record at
    all is skipped as a whole."""
    path = Path(directory)
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory (give the record.path of a node)")
    rec = Recording(directory=path)
    heaps: dict[str, list[tuple[float, int, dict[str, Any]]]] = {"task": [], "telemetry": []}
    caps = {"task": max(1, max_tasks), "telemetry": MAX_TELEMETRY}
    older = {"task": 0, "telemetry": 0}
    order = itertools.count()

    def keep(kind: str, when: Any, doc: dict[str, Any]) -> None:
        """Keep the most recent `caps[kind]` lines (a min-heap on their time)."""
        heap = heaps[kind]
        item = (float(when) if _num(when) else 0.0, next(order), doc)
        if len(heap) < caps[kind]:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)
            older[kind] += 1

    def problem(text: str) -> None:
        rec.problems.append(text)
        if warn is not None:
            warn(text)

    for file in sorted(p for p in path.iterdir() if p.is_file()):
        good, bad, shown = 0, 0, 0
        pending: list[str] = []  # a file's line problems, told once it proves to be a record
        last = 0
        try:
            for number, line in _lines(file):
                last = number
                if not line.strip():
                    continue
                why = None
                try:
                    doc = json.loads(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    doc, why = None, f"not JSON ({str(exc)[:60]})"
                if why is None and not isinstance(doc, dict):
                    why = "not a JSON object"
                elif why is None and doc.get("kind") == "task":
                    why = _check_task(doc)
                    if why is None:
                        keep("task", doc["arrived_unix_s"], doc)
                elif why is None and doc.get("kind") == "telemetry":
                    why = _check_telemetry(doc)
                    if why is None:
                        keep("telemetry", doc.get("t_unix_s"), doc)
                elif why is None:
                    why = f"not an edgesched record line (kind {doc.get('kind')!r})"
                if why is None:
                    good += 1
                    for text in pending:
                        problem(text)
                    pending.clear()
                    continue
                bad += 1
                if good == 0 and bad >= 3:
                    break  # three bad lines and no good one: a foreign file
                if shown < MAX_PROBLEMS_PER_FILE:
                    shown += 1
                    (problem if good else pending.append)(
                        f"{file}:{number}: {why}: line skipped")
        except EOFError:
            problem(f"{file}:{last + 1}: truncated (the file ends inside its compressed "
                    f"stream; it was still being written or was cut): the {good} line(s) "
                    f"before are used")
        except (OSError, zlib.error) as exc:
            problem(f"{file}:{last + 1}: not a readable record file ({exc}): "
                    + (f"the {good} line(s) before are used" if good else "skipped"))
        if good == 0:
            if bad:
                first = pending[0].split(": ", 1)[1] if pending else ""
                problem(f"{file}: not an edgesched record file ({first}): skipped")
            continue
        if bad > shown:
            problem(f"{file}: {bad - shown} more bad line(s) skipped")
        rec.files += 1
    if older["task"]:
        problem(f"{path}: {older['task']} older task(s) beyond the {max_tasks} most recent "
                "not replayed (--max-tasks)")
    rec.tasks = [doc for _, _, doc in heaps["task"]]
    rec.telemetry = [doc for _, _, doc in heaps["telemetry"]]
    seen: set[tuple[str, str, float]] = set()
    unique = []
    for t in rec.tasks:  # a file copied twice into the directory counts once
        key = (t["origin"], t["id"], t["arrived_unix_s"])
        if key not in seen:
            seen.add(key)
            unique.append(t)
    rec.tasks = sorted((t for t in unique if t.get("role", "edge") == "edge"),
                       key=lambda t: t["arrived_unix_s"])
    rec.telemetry.sort(key=lambda d: d.get("t_unix_s", 0.0) if _num(
        d.get("t_unix_s")) else 0.0)
    if not rec.tasks:
        raise UsageError(f"{path}: no recorded task in {rec.files} record file(s) "
                         "(is record.path set on an edge node, and has it run tasks?)")
    return rec


# -- fitting --------------------------------------------------------------------------------------

@dataclass
class SiteModel:
    """The recording fitted: a scenario (nodes, links, task types, fitted arrival processes)
    and the recorded task stream in simulator form."""

    scenario_doc: dict[str, Any]
    scenario: Scenario
    stream: TaskStream
    speeds: dict[str, float]
    notes: list[str]
    explore: float = 0.0  # the recording node's record.explore


def _median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def _sim_type_name(ttype: str, deadline: float | None, unique: bool) -> str:
    if unique:
        return ttype
    label = "none" if deadline is None else f"{deadline * 1000:g}ms"
    return _NAME_RE.sub("_", f"{ttype}-d{label}")


def _speeds(rec: Recording, reference: str, nodes: list[str]) -> tuple[dict[str, float],
                                                                       list[str]]:
    """Each node's speed relative to `reference` (1.0): from the medians of the measured
    execution times of the task types both ran; else from the recording node's own estimates
    at decision time (the candidates' execution times); else announced speeds; else 1."""
    measured: dict[tuple[str, str], list[float]] = defaultdict(list)
    estimated: dict[str, list[float]] = defaultdict(list)
    for t in rec.tasks:
        for a in t.get("attempts", []):
            if a.get("outcome") == "ok" and a.get("exec_s", 0) > 0 and t.get("exact_s") is None:
                node = CLOUD_ID if a["placement"] == "cloud" else a["node_id"]
                measured[(node, t["type"])].append(float(a["exec_s"]))
        cands = {(CLOUD_ID if c["placement"] == "cloud" else c["node_id"]): c
                 for c in t.get("candidates", [])}
        local = next((c for c in t.get("candidates", []) if c["placement"] == "local"), None)
        if local and t["origin"] == reference and _num(local.get("exec_mean_s")) and (
                local["exec_mean_s"] > 0):
            for node, c in cands.items():
                if _num(c.get("exec_mean_s")) and c["exec_mean_s"] > 0:
                    estimated[node].append(local["exec_mean_s"] / c["exec_mean_s"])
    announced: dict[str, float] = {}
    local_speed = 1.0
    for doc in rec.telemetry:
        if doc.get("node") == reference and _num((doc.get("local") or {}).get("speed")):
            local_speed = float(doc["local"]["speed"])
        for n in doc.get("neighbours") or []:
            if isinstance(n, dict) and _num(n.get("speed")) and isinstance(n.get("node_id"), str):
                announced[n["node_id"]] = float(n["speed"])
    speeds, notes = {reference: 1.0}, []
    for node in nodes:
        if node == reference:
            continue
        ratios = []
        for (n, ttype), xs in measured.items():
            ref = measured.get((reference, ttype))
            if n == node and ref and len(ref) >= 3 and len(xs) >= 3:
                ratios.append(_median(ref) / max(_median(xs), 1e-9))
        if ratios:
            speeds[node] = _median(ratios)
            how = "measured execution times"
        elif estimated.get(node):
            speeds[node] = _median(estimated[node])
            how = "the node's estimates"
        elif node in announced:
            speeds[node] = announced[node] / local_speed
            how = "its announced speed"
        else:
            speeds[node] = 1.0
            how = "nothing known: assumed equal"
        notes.append(f"speed of {node} relative to {reference}: {speeds[node]:.3g} ({how})")
    return speeds, notes


def _link_fit(samples: list[tuple[float, float]], bandwidth: float, default_rtt: float
              ) -> float:
    """The RTT that explains measured network times: median(exchange - bits / bandwidth)."""
    if not samples:
        return default_rtt
    rtts = [max(MIN_RTT_S, s - 8.0 * nbytes / bandwidth) for s, nbytes in samples]
    return _median(rtts)


def _last_link(rec: Recording, origin: str, target: str) -> dict[str, float] | None:
    for doc in reversed(rec.telemetry):
        if doc.get("node") == origin:
            link = (doc.get("links") or {}).get(target)
            if isinstance(link, dict) and _num(link.get("rtt_s")) and _num(
                    link.get("bandwidth_bps")) and link["bandwidth_bps"] > 0:
                return {"rtt_s": float(link["rtt_s"]), "bandwidth_bps":
                        float(link["bandwidth_bps"])}
    return None


def fit(rec: Recording) -> SiteModel:
    """The site model of a recording (see the module docstring)."""
    tasks = rec.tasks
    origins = sorted({t["origin"] for t in tasks}, key=lambda o: -sum(
        1 for t in tasks if t["origin"] == o))
    reference = origins[0]
    edge: dict[str, int] = {o: 1 for o in origins}  # node -> slots
    cloud = False
    for t in tasks:
        for c in t.get("candidates", []):
            slots = c.get("slots") if isinstance(c.get("slots"), int) else 1
            if c["placement"] == "cloud":
                cloud = True
            elif c["placement"] == "local":
                edge[t["origin"]] = max(1, slots)  # the latest decision's own slots
            else:
                edge[c["node_id"]] = max(edge.get(c["node_id"], 1), slots)
        for a in t.get("attempts", []):
            cloud = cloud or a["placement"] == "cloud"
    for doc in rec.telemetry:
        local = doc.get("local") or {}
        if doc.get("node") in edge and isinstance(local.get("slots"), int):
            edge[doc["node"]] = max(1, local["slots"])
        for n in doc.get("neighbours") or []:
            if isinstance(n, dict) and isinstance(n.get("node_id"), str) and isinstance(
                    n.get("slots"), int) and _NAME_RE.search(n["node_id"]) is None:
                edge[n["node_id"]] = max(edge.get(n["node_id"], 1), n["slots"])
    nodes = sorted(edge, key=lambda n: (n not in origins, n))
    speeds, notes = _speeds(rec, reference, nodes + ([CLOUD_ID] if cloud else []))

    # every task's work: what it measured, in seconds at the reference node's speed
    work = np.empty(len(tasks))
    by_type: dict[str, list[float]] = defaultdict(list)
    for i, t in enumerate(tasks):
        w = None
        if t.get("exact_s") is not None:
            w = float(t["exact_s"])
        else:
            for a in t.get("attempts", []):
                if a.get("outcome") == "ok":
                    node = CLOUD_ID if a["placement"] == "cloud" else a["node_id"]
                    w = float(a.get("exec_s", 0.0)) * speeds.get(node, 1.0)
        if w is None:
            local = next((c for c in t.get("candidates", []) if c["placement"] == "local"),
                         None)
            if local is not None and _num(local.get("exec_mean_s")):
                w = float(local["exec_mean_s"]) * speeds.get(t["origin"], 1.0)
        work[i] = -1.0 if w is None else max(0.0, w)
        if w is not None:
            by_type[t["type"]].append(max(0.0, w))
    for i, t in enumerate(tasks):
        if work[i] < 0:
            xs = by_type.get(t["type"])
            work[i] = _median(xs) if xs else 0.01

    # links: the recorded network times of remote attempts
    lan_samples: list[tuple[float, float]] = []
    wan_samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in tasks:
        nbytes = float(t["input_bytes"]) + float(t["output_bytes"])
        for a in t.get("attempts", []):
            if a.get("outcome") != "ok" or a["placement"] == "local":
                continue
            sample = (float(a.get("exchange_s", 0.0)), nbytes)
            if a["placement"] == "cloud":
                wan_samples[t["origin"]].append(sample)
            else:
                lan_samples.append(sample)
    lan_known = [x for o in origins for n in nodes if n != o
                 for x in [_last_link(rec, o, n)] if x]
    lan_bw = _median([x["bandwidth_bps"] for x in lan_known]) if lan_known else (
        DEFAULT_LAN["bandwidth_bps"])
    lan_prior = _median([x["rtt_s"] for x in lan_known]) if lan_known else DEFAULT_LAN["rtt_s"]
    lan = {"rtt_s": round(_link_fit(lan_samples, lan_bw, lan_prior), 6),
           "bandwidth_bps": float(lan_bw)}
    notes.append(f"edge links: rtt {lan['rtt_s'] * 1e3:.2f} ms from {len(lan_samples)} "
                 f"measured neighbour exchange(s), {lan_bw:.3g} bit/s")

    # task types: one per (type, deadline); offload rule from the candidates' reasons
    keys = sorted({(t["type"], t.get("deadline_s")) for t in tasks},
                  key=lambda k: (k[0], -1.0 if k[1] is None else k[1]))
    per_type = Counter(k[0] for k in keys)
    names = {k: _sim_type_name(k[0], k[1], per_type[k[0]] == 1) for k in keys}
    type_docs = []
    times = replay_times([t["arrived_unix_s"] for t in tasks])
    gaps = int(np.count_nonzero(np.diff(times) >= MAX_IDLE_S - 1e-9))
    if gaps:
        notes.append(f"{gaps} idle gap(s) longer than {MAX_IDLE_S:g}s shortened to "
                     f"{MAX_IDLE_S:g}s")
    duration = max(1.0, float(times[-1]) + 1e-3)
    for key in keys:
        group = [(i, t) for i, t in enumerate(tasks) if (t["type"], t.get("deadline_s")) == key]
        reasons: Counter[str] = Counter()
        for _, t in group:
            for c in t.get("candidates", []):
                if c.get("reason") == "offload_policy":
                    reasons[c["placement"]] += 1
        offload = ("local" if reasons["neighbour"] else "neighbours" if reasons["cloud"]
                   else "anywhere")
        ws = work[[i for i, _ in group]]
        mean, std = float(ws.mean()), float(ws.std())
        dist: dict[str, Any] = {"dist": "fixed", "value": round(mean, 6)} if (
            std <= 1e-3 * max(mean, 1e-9)) else {
            "dist": "lognormal", "mean": round(max(mean, 1e-6), 6),
            "cv": round(min(std / max(mean, 1e-9), 10.0), 4)}
        first = group[0][1]
        local = next((c for c in first.get("candidates", []) if c["placement"] == "local"),
                     None)
        prior = local.get("exec_mean_s") if local and _num(local.get("exec_mean_s")) else None
        ins = [float(t["input_bytes"]) for _, t in group]
        tdoc: dict[str, Any] = {
            "name": names[key], "work": dist,
            "input_bytes": {"dist": "fixed", "value": round(_median(ins), 1)} if (
                max(ins) == min(ins)) else {"dist": "uniform", "low": min(ins),
                                            "high": max(ins)},
            "output_bytes": float(first["output_bytes"]), "offload": offload,
        }
        if all(t.get("exact_s") is not None for _, t in group):
            tdoc["exact"] = True  # the daemon knew each one's execution time (e.g. sleep)
        if key[1] is not None:
            tdoc["deadline_s"] = float(key[1])
        if prior is not None:
            tdoc["prior_s"] = round(float(prior), 6)
        type_docs.append(tdoc)

    node_docs = []
    for n in nodes:
        nd: dict[str, Any] = {"id": n, "slots": edge[n], "speed": round(speeds.get(n, 1.0), 6)}
        if cloud and n in origins:
            bw_known = _last_link(rec, n, CLOUD_ID)
            bw = bw_known["bandwidth_bps"] if bw_known else DEFAULT_WAN["bandwidth_bps"]
            prior = bw_known["rtt_s"] if bw_known else DEFAULT_WAN["rtt_s"]
            rtt = _link_fit(wan_samples.get(n, []), bw, prior)
            nd["uplink"] = {"rtt_s": round(rtt, 6), "bandwidth_bps": float(bw)}
            notes.append(f"{n}'s cloud link: rtt {rtt * 1e3:.2f} ms from "
                         f"{len(wan_samples.get(n, []))} measured cloud exchange(s), "
                         f"{bw:.3g} bit/s")
        node_docs.append(nd)

    arrivals = []
    for o in origins:
        for key in keys:
            count = sum(1 for t in tasks if t["origin"] == o and (t["type"], t.get(
                "deadline_s")) == key)
            if count:
                arrivals.append({"node": o, "type": names[key], "process": "poisson",
                                 "rate_per_s": round(count / duration, 6)})
    telemetry_docs = [d for d in rec.telemetry if d.get("node") == reference]
    policy = next((d.get("policy") for d in reversed(telemetry_docs)
                   if isinstance(d.get("policy"), dict)), None)
    interval = next((d.get("telemetry_interval_s") for d in reversed(telemetry_docs)
                     if _num(d.get("telemetry_interval_s"))), 1.0)
    explore = next((float(d["explore"]) for d in reversed(telemetry_docs)
                    if _num(d.get("explore")) and 0 <= d["explore"] <= 1), 0.0)
    scenario_doc: dict[str, Any] = {
        "version": 1, "name": f"replay-{rec.directory.name}",
        "description": f"fitted to {len(tasks)} recorded tasks of {', '.join(origins)} "
                       f"({rec.directory})",
        "duration_s": round(duration, 3), "seed": 1,
        "cloud": {"rtt_s": DEFAULT_WAN["rtt_s"], "bandwidth_bps": DEFAULT_WAN["bandwidth_bps"],
                  "speed": round(speeds.get(CLOUD_ID, 1.0), 6), "slots": 64} if cloud
        else False,
        "links": lan, "nodes": node_docs, "task_types": type_docs, "arrivals": arrivals,
        "telemetry": {"interval_s": float(interval)},
    }
    if policy:
        policy = {k: v for k, v in policy.items() if k in _policy_keys() and v is not None}
        if _valid_policy(policy):
            scenario_doc["policy"] = policy
        else:
            notes.append("the recorded policy settings are not valid: defaults used")
    scenario = load_scenario(scenario_doc)
    node_index = {n: i for i, n in enumerate(nodes)}
    type_index = {names[k]: i for i, k in enumerate(keys)}
    stream = TaskStream(
        time=times,
        origin=np.array([node_index[t["origin"]] for t in tasks], dtype=np.int64),
        ttype=np.array([type_index[names[(t["type"], t.get("deadline_s"))]] for t in tasks],
                       dtype=np.int64),
        work=work,
        input_bytes=np.array([float(t["input_bytes"]) for t in tasks]),
        output_bytes=np.array([float(t["output_bytes"]) for t in tasks]),
    )
    return SiteModel(scenario_doc=scenario_doc, scenario=scenario, stream=stream,
                     speeds=speeds, notes=notes, explore=explore)


def run_replayed(model: SiteModel, policy: str, seed: int, epsilon: float = 0.0,
                 progress: Callable[[int], None] | None = None) -> tuple[RunRecord, Engine]:
    """One policy over the recorded stream; with `epsilon`, explored ε-greedy as the daemon
    does with record.explore (core/exploration.py)."""
    base = _brain_factory(model.scenario, policy, seed)

    def make(node: Any, world: Any) -> Any:
        brain = base(node, world)
        if epsilon > 0 and hasattr(brain, "policy"):
            rng = np.random.default_rng([seed, node.index, 0xE9])
            brain.policy = ExploringPolicy(brain.policy, epsilon, rng)
        return brain

    engine = Engine(model.scenario, model.stream, make, progress)
    return engine.run(), engine


def replay_times(unix_s: Sequence[float]) -> np.ndarray:
    """Arrival times from 0, each idle gap longer than MAX_IDLE_S shortened to it (the site
    had long drained by then; a recording of weeks, or a clock jump, stays a short replay)."""
    t = np.asarray(unix_s, dtype=float)
    if t.size == 0:
        return t
    gaps = np.minimum(np.diff(t), MAX_IDLE_S)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def _policy_keys() -> set[str]:
    from edgesched.config import PolicySettings

    return set(PolicySettings.model_fields)


def _valid_policy(doc: dict[str, Any]) -> bool:
    from edgesched.config import PolicySettings

    try:
        PolicySettings(**doc).to_params()
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return False
    return True


# -- what happened --------------------------------------------------------------------------------

def observed_summary(tasks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The recorded policy's actual figures, with the keys of a simulated policy's."""
    lat = np.array([t["latency_s"] for t in tasks if t.get("status") == "ok"
                    and _num(t.get("latency_s"))], dtype=float)
    n = len(tasks)
    in_time = sum(1 for t in tasks if t.get("status") == "ok" and _num(t.get("latency_s"))
                  and (t.get("deadline_s") is None or t["latency_s"] <= t["deadline_s"]))
    placements = {"local": 0, "neighbour": 0, "cloud": 0}
    failures: Counter[str] = Counter()
    for t in tasks:
        if t.get("status") == "ok" and t.get("placement") in placements:
            placements[t["placement"]] += 1
        elif t.get("status") != "ok":
            failures[str(t.get("status"))] += 1
    energy = sum(float(t["energy_j"]) for t in tasks if _num(t.get("energy_j")))
    regrets = [float(t["regret_s"]) for t in tasks if _num(t.get("regret_s"))]

    def r(x: float) -> float | None:
        return None if not math.isfinite(x) else round(float(x), 6)

    if lat.size:
        mean = float(lat.mean())
        p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    else:
        mean = p50 = p95 = p99 = math.nan
    policies = Counter(str(t.get("policy")) for t in tasks if t.get("policy"))
    explored = sum(1 for t in tasks if t.get("explored"))
    return {
        "policy": policies.most_common(1)[0][0] if policies else None,
        "completed": int(lat.size), "mean_latency_s": r(mean), "p50_latency_s": r(p50),
        "p95_latency_s": r(p95), "p99_latency_s": r(p99),
        "deadline_miss_ratio": r((n - in_time) / n) if n else 0.0,
        "energy_j_per_task": r(energy / n) if n else 0.0,
        "placements": placements, "failures": dict(sorted(failures.items())),
        "live_regret_mean_s": r(float(np.mean(regrets))) if regrets else None,
        "explored": explored,
    }


# -- off-policy estimate ---------------------------------------------------------------------------

IPS_POLICIES = ("cost", "local", "cloud", "least_loaded", "greedy_latency", "random")


def _candidate(doc: dict[str, Any]) -> Candidate:
    link = None
    if _num(doc.get("rtt_s")) and _num(doc.get("bandwidth_bps")) and doc["bandwidth_bps"] > 0:
        link = LinkEstimate(rtt_s=max(0.0, doc["rtt_s"]),
                            rtt_std_s=max(0.0, doc.get("rtt_std_s") or 0.0),
                            bandwidth_bps=doc["bandwidth_bps"],
                            bandwidth_std_bps=max(0.0, doc.get("bandwidth_std_bps") or 0.0))
    raw = doc.get("liveness")
    liveness = raw if isinstance(raw, str) and raw in {v.value for v in Liveness} else "online"
    return Candidate(
        node_id=doc["node_id"], placement=Placement(doc["placement"]),
        liveness=Liveness(liveness), age_s=max(0.0, float(doc.get("age_s") or 0.0)),
        slots=max(0, int(doc.get("slots") or 1)), running=max(0, int(doc.get("running") or 0)),
        queued=max(0, int(doc.get("queued") or 0)),
        est_wait_s=max(0.0, float(doc.get("est_wait_s") or 0.0)),
        wait_std_s=max(0.0, float(doc.get("wait_std_s") or 0.0)), link=link,
        exec=ExecEstimate(mean_s=max(0.0, float(doc.get("exec_mean_s") or 0.0)),
                          std_s=max(0.0, float(doc.get("exec_std_s") or 0.0))),
        battery=doc.get("battery") if _num(doc.get("battery")) else None)


def ips_estimates(rec: Recording, names: Sequence[str], params: CostParams
                  ) -> dict[str, dict[str, Any]]:
    """Off-policy estimates from the recorded decisions alone (no simulator): for each task,
    `names`' policy decides on the candidates the node saw; where it picks what was chosen,
    the task's outcome counts with weight π(choice) / propensity (self-normalised inverse
    propensity scoring). Meaningful with `record.explore` > 0: otherwise only the tasks where
    the policy agrees with the recorded one are seen, a biased sample. `support` is how many
    recorded tasks the estimate rests on."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in IPS_POLICIES:
            continue
        policy = make_policy(name, params, np.random.default_rng(0))
        w_sum = w_ok = lat_sum = miss_sum = 0.0
        support = 0
        for t in rec.tasks:
            chosen, raw_prop = t.get("chosen"), t.get("propensity")
            if not chosen or not isinstance(raw_prop, int | float) or not t.get("candidates"):
                continue
            prop = float(raw_prop)
            if not 0 < prop <= 1:  # (NaN too)
                continue
            try:
                cands = [_candidate(c) for c in t["candidates"]]
                spec = TaskSpec(task_type=t["type"], input_bytes=float(t["input_bytes"]),
                                output_bytes=float(t["output_bytes"]), work=float(t["work"]),
                                exact_s=t.get("exact_s"), deadline_s=t.get("deadline_s"),
                                submitted_at=0.0)
                decision = policy.decide(spec, cands, max(0.0, t.get("decided_s") or 0.0))
            except (ValueError, TypeError, KeyError):
                continue
            feasible = [e.node_id for e in decision.evaluations if e.feasible]
            if name == "random":
                pi = 1.0 / len(feasible) if chosen in feasible else 0.0
            else:
                pi = 1.0 if decision.chosen is not None and decision.chosen.node_id == chosen \
                    else 0.0
            if pi == 0.0:
                continue
            w = pi / prop
            support += 1
            w_sum += w
            ok = t.get("status") == "ok" and _num(t.get("latency_s"))
            if ok:
                w_ok += w
                lat_sum += w * t["latency_s"]
            missed = not ok or (t.get("deadline_s") is not None and t["latency_s"] > t[
                "deadline_s"])
            miss_sum += w * missed
        out[name] = {
            "support": support,
            "mean_latency_s": round(lat_sum / w_ok, 6) if w_ok else None,
            "deadline_miss_ratio": round(miss_sum / w_sum, 6) if w_sum else None,
        }
    return out


# -- the replay ------------------------------------------------------------------------------------

def replay(rec: Recording, policies: Sequence[str] | None = None, *, seed: int = 1,
           on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run `policies` (default: the recorded one) and the hindsight oracle over the recorded
    tasks; the report as a dict (`simulate --json`'s keys, plus observed and regret_s).

    The recorded policy is replayed as it ran: with the recording's exploration rate
    (`record.explore`), so that it reproduces what was observed; every other policy without."""
    model = fit(rec)
    observed = observed_summary(rec.tasks)
    names = check_policies(list(policies) if policies else [observed["policy"] or "cost"])
    if "oracle" not in names:
        names.append("oracle")
    total = len(model.stream)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        progress = None
        if on_progress is not None:
            def progress(done: int, _name: str = name) -> None:
                on_progress(_name, done, total)
        epsilon = model.explore if name == observed["policy"] else 0.0
        outcome, engine = run_replayed(model, name, seed, epsilon, progress)
        summary = policy_summary(outcome, total, sum(n.energy_j for n in engine.nodes))
        results[name] = summary
        if on_progress is not None:
            on_progress(name, total, total)
    for name, est in ips_estimates(rec, names, model.scenario.policy_params).items():
        results[name]["ips"] = est
    oracle_mean = results["oracle"]["mean_latency_s"]
    for summary in results.values():
        mean = summary["mean_latency_s"]
        summary["regret_s"] = None if mean is None or oracle_mean is None else round(
            mean - oracle_mean, 6)
    obs_mean = observed["mean_latency_s"]
    span = rec.tasks[-1]["arrived_unix_s"] - rec.tasks[0]["arrived_unix_s"]
    return {
        "scenario": model.scenario.name, "seed": seed, "tasks": total,
        "record_dir": str(rec.directory), "files": rec.files, "skipped": list(rec.problems),
        "recorded_span_s": round(span, 3), "origins": sorted({t["origin"] for t in rec.tasks}),
        "policies": results, "observed": observed,
        "regret_s": None if obs_mean is None or oracle_mean is None else round(
            obs_mean - oracle_mean, 6),
        "explore": model.explore,
        "fit": {"speeds": {k: round(v, 4) for k, v in model.speeds.items()},
                "notes": model.notes},
    }


def emit_scenario(rec: Recording, path: Path) -> dict[str, Any]:
    """Write the fitted scenario as YAML to `path` (loadable by `edgesched simulate`)."""
    doc = fit(rec).scenario_doc
    header = ("# fitted by `edgesched replay --emit-scenario` (docs/replay.md): arrival rates,\n"
              "# task mix, execution-time distributions and links of the recorded site\n")
    try:
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return doc


# -- the command ----------------------------------------------------------------------------------

def _table(report: dict[str, Any]) -> dict[str, Any]:
    """The report in `table_rows`/`plot_report` form: observed first, then each policy."""
    observed = report["observed"]
    label = f"observed ({observed['policy'] or '?'})"
    return {**report, "policies": {label: observed, **report["policies"]}}


def replay_command(args: Any) -> int:
    """Entry point of `edgesched replay` (docs/replay.md)."""
    import sys
    import time

    from edgesched.sim.report import table_rows

    def warn(text: str) -> None:
        print(f"replay: {text}", file=sys.stderr)

    if args.plot_path:
        from edgesched.sim.plot import require_matplotlib

        require_matplotlib()
    if args.policies:
        check_policies(args.policies)  # an unknown name stops before the files are read
    started = time.perf_counter()
    rec = read_recording(args.record_dir, warn=warn, max_tasks=args.max_tasks)
    print(f"replay: {len(rec.tasks)} recorded tasks from {rec.files} file(s) in "
          f"{rec.directory}", file=sys.stderr)
    if args.scenario_path:
        emit_scenario(rec, Path(args.scenario_path))
        print(f"scenario written to {args.scenario_path}")
    last = [0.0]

    def progress(name: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done >= total or now - last[0] >= 2.0:  # a line every 2 s on long replays
            last[0] = now
            print(f"replay: {name} {done}/{total} tasks", file=sys.stderr)

    report = replay(rec, args.policies, seed=args.seed, on_progress=progress)
    for note in report["fit"]["notes"]:
        print(f"replay: fit: {note}", file=sys.stderr)
    rows = table_rows(_table(report))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"replay of {report['tasks']} tasks recorded at {', '.join(report['origins'])} over "
          f"{report['recorded_span_s']:.1f}s (seed {report['seed']})")
    for row in rows:
        print("  ".join(cell.ljust(w) if i in (0, 8, 9) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    if report["regret_s"] is not None:
        print(f"regret of the recorded policy: {report['regret_s'] * 1e3:.1f} ms mean latency "
              "above the hindsight oracle")
    for name, summary in report["policies"].items():
        est = summary.get("ips")
        if est and est["mean_latency_s"] is not None and report["explore"] > 0:
            print(f"off-policy (IPS) estimate of {name} from {est['support']} recorded "
                  f"decisions: mean {est['mean_latency_s'] * 1e3:.1f} ms, miss "
                  f"{est['deadline_miss_ratio'] * 100:.2f} %")
    live = report["observed"].get("live_regret_mean_s")
    if live is not None:
        print(f"live regret (edgesched_regret_seconds, mean): {live * 1e3:.1f} ms")
    print(f"replayed in {time.perf_counter() - started:.1f}s")
    if args.json_path:
        try:
            Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n",
                                            encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.json_path}: {exc.strerror}") from None
        print(f"report written to {args.json_path}")
    if args.plot_path:
        from edgesched.sim.plot import plot_report

        plot_report(_table(report), Path(args.plot_path))
        print(f"plot written to {args.plot_path}")
    return 0
