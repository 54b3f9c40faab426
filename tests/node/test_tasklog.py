"""The recent-task store behind GET /v1/tasks/{id}: bounded in bytes, one record per id."""

from __future__ import annotations

import pytest

from edgesched.core.model import Placement
from edgesched.node.tasklog import (
    ENTRY_OVERHEAD_BYTES,
    TaskLog,
    task_record,
    valid_task_id,
)
from edgesched.node.trace import CandidateTrace, TaskTrace, new_trace, record_line


def _trace(i: int, candidates: int) -> TaskTrace:
    trace = new_trace(task_id=f"task-{i:06d}", task_type="hash", origin="gw-1", role="edge",
                      received_at=1000.0 + i, work=1024.0 + i, exact_s=None, input_bytes=64,
                      output_bytes=128, deadline_s=0.5, priority=0, device_id=None)
    trace.candidates = [
        CandidateTrace(node_id=f"gw-{k}", placement="neighbour", queued=k, rtt_s=0.004 + i,
                       bandwidth_bps=1e8 + i, latency_mean_s=0.05 + i, latency_q_s=0.08 + i,
                       energy_j=0.4 + i, score=0.05 + k + i, feasible=True)
        for k in range(candidates)]
    trace.add_attempt(node_id="gw-0", placement=Placement.NEIGHBOUR, outcome="ok",
                      started=1000.001 + i, duration_s=0.041 + i, exec_s=0.04, wait_s=0.001)
    trace.status, trace.latency_s = "ok", 0.0415 + i
    return trace


def keep(log: TaskLog, trace: TaskTrace) -> None:
    """Hand `trace` to the store as the pipeline does, with its record line."""
    log.on_task_finished(trace, record_line(trace))


def test_a_kept_trace_counts_its_record_line() -> None:
    """A kept trace costs its record line's bytes (plus the entry's overhead), exactly: the
    line is what the store holds."""
    log = TaskLog()
    for candidates in (0, 3, 10):
        trace = _trace(candidates, candidates)
        before = log.bytes
        keep(log, trace)
        assert log.bytes - before == len(record_line(trace)) + ENTRY_OVERHEAD_BYTES


def test_a_trace_that_cannot_be_encoded_is_kept_as_a_record() -> None:
    """No line (the pipeline could not encode the trace): the store keeps its record, cleaned
    (here a surrogate, which UTF-8 cannot hold, in an error message)."""
    trace = _trace(1, 2)
    trace.error = "bad \udc80 byte"
    with pytest.raises(TypeError):
        record_line(trace)
    log = TaskLog()
    log.on_task_finished(trace, None)
    doc = log.get(trace.id)
    assert doc is not None and doc["id"] == trace.id and len(doc["candidates"]) == 2


def test_traces_are_kept_within_the_bytes_and_looked_up_as_records() -> None:
    log = TaskLog(max_bytes=100_000)
    for i in range(200):
        keep(log, _trace(i, 3))
    assert log.bytes <= 100_000 and log.evicted == 200 - len(log) > 0
    assert log.get("task-000000") is None
    doc = log.get("task-000199")
    assert doc is not None and doc["attempts"][0]["target"] == "gw-0"
    assert len(doc["candidates"]) == 3 and "recorded_at" in doc
    assert [d["id"] for d in log.recent(2)] == ["task-000199", "task-000198"]
    stats = log.stats()
    assert stats["tasks"] == len(log) and stats["bytes"] == log.bytes
    assert [line["id"] for line in stats["last"][:2]] == ["task-000199", "task-000198"]
    assert stats["last"][0]["outcome"] == "ok" and len(stats["last"]) == 20
    # a trace too big for a quarter of the store is kept cut down, not whole
    small = TaskLog(max_bytes=8_000)
    keep(small, _trace(7, 40))
    cut = small.get("task-000007")
    assert cut is not None and cut["truncated"] is True and small.bytes <= 2_000


def test_oldest_records_go_first_when_the_bytes_run_out() -> None:
    log = TaskLog(max_bytes=20_000)
    for i in range(500):
        log.record({"id": f"task-{i}", "type": "echo", "outcome": "ok", "pad": "x" * 100})
    assert log.bytes <= 20_000
    assert log.evicted == 500 - len(log)
    assert log.get("task-0") is None
    assert log.get("task-499") is not None
    newest = [r["id"] for r in log.recent(3)]
    assert newest == ["task-499", "task-498", "task-497"]
    one = len(b'{"id":"task-499","type":"echo","outcome":"ok","pad":"' + b"x" * 100 + b'"')
    assert len(log) >= 20_000 // (one + 40 + ENTRY_OVERHEAD_BYTES)  # the store is used


def test_a_repeated_id_replaces_its_record_and_bytes_stay_exact() -> None:
    log = TaskLog(max_bytes=1 << 20)
    log.record({"id": "a", "outcome": "failed"})
    log.record({"id": "a", "outcome": "ok"})
    assert len(log) == 1 and log.get("a")["outcome"] == "ok"  # type: ignore[index]
    log.record({"id": "b", "outcome": "ok"})
    assert log.bytes == sum(len(log._entries[k][0]) + ENTRY_OVERHEAD_BYTES for k in ("a", "b"))


def test_a_huge_record_is_cut_not_allowed_to_evict_everything() -> None:
    log = TaskLog(max_bytes=64 << 10)
    log.record({"id": "small", "outcome": "ok"})
    huge = {"id": "big", "outcome": "ok",
            "candidates": [{"node_id": f"n{i}", "reason": "x" * 500} for i in range(200)]}
    log.record(huge)
    big = log.get("big")
    assert big is not None and big["truncated"] is True and len(big["candidates"]) == 8
    assert log.get("small") is not None


def test_values_json_has_no_form_for_are_made_safe() -> None:
    log = TaskLog()
    log.record({"id": "n", "latency_s": float("nan"), "score": float("inf"),
                "nodes": ("a", "b"), "error": "e" * 5000})
    doc = log.get("n")
    assert doc is not None
    assert doc["latency_s"] is None and doc["score"] is None and doc["nodes"] == ["a", "b"]
    assert len(doc["error"]) == 603


def test_off_and_ids() -> None:
    log = TaskLog(max_bytes=0)
    log.record({"id": "a"})
    assert len(log) == 0 and log.get("a") is None
    assert valid_task_id("x" * 128) and not valid_task_id("x" * 129)
    assert not valid_task_id("") and not valid_task_id("a\nb")


def test_the_record_of_a_trace_says_why() -> None:
    trace = new_trace(task_id="t1", task_type="echo", origin="edge-1", role="edge",
                      received_at=100.0, work=10.0, exact_s=None, input_bytes=10,
                      output_bytes=10, deadline_s=0.5, priority=0, device_id=None)
    trace.candidates = [
        CandidateTrace(node_id="edge-1", placement="local", feasible=False, reason="deadline",
                       latency_mean_s=0.9),
        CandidateTrace(node_id="cloud", placement="cloud", feasible=True, score=0.25,
                       latency_mean_s=0.2),
    ]
    trace.chosen, trace.chosen_score, trace.policy = "cloud", 0.25, "cost"
    trace.add_attempt(node_id="cloud", placement=Placement.CLOUD, outcome="ok", started=100.01,
                      duration_s=0.21, exec_s=0.1, executed_by="cloud")
    trace.status, trace.placement, trace.latency_s = "ok", "cloud", 0.22
    log = TaskLog()
    keep(log, trace)
    doc = log.get("t1")
    assert doc is not None
    assert doc == {**task_record(trace.to_dict()), "recorded_at": doc["recorded_at"]}
    assert doc["outcome"] == "ok" and doc["node_id"] == "edge-1"
    assert doc["decision"]["chosen"] == "cloud" and doc["decision"]["score"] == 0.25
    assert doc["decision"]["why"] == ("cloud had the lowest score (0.25) among 1 feasible "
                                      "candidate(s); not feasible: edge-1 (deadline)")
    assert [c["reason"] for c in doc["candidates"]] == ["deadline", None]
    attempt = doc["attempts"][0]
    assert attempt["target"] == "cloud" and attempt["result"] == "ok"
    assert attempt["started_after_s"] == 0.01 and attempt["duration_s"] == 0.21


def test_a_store_that_is_off_gets_no_traces_and_none_are_encoded_for_it() -> None:
    """`http.recent_tasks_bytes: 0` and no recorder: the pipeline has no trace sink, so it
    encodes no trace line (node/service.py `trace_sinks`)."""
    from edgesched.node.service import trace_sinks

    on = TaskLog()
    assert trace_sinks(on, None) == (on,)
    assert trace_sinks(TaskLog(max_bytes=0), None) == ()
