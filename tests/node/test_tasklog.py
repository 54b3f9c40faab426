"""The recent-task store behind GET /v1/tasks/{id}: bounded in bytes, one record per id."""

from __future__ import annotations

from edgesched.core.model import Placement
from edgesched.node.tasklog import ENTRY_OVERHEAD_BYTES, TaskLog, task_record, valid_task_id
from edgesched.node.trace import CandidateTrace, new_trace


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
    assert log.bytes == sum(len(log._entries[k]) + ENTRY_OVERHEAD_BYTES for k in ("a", "b"))


def test_a_huge_record_is_cut_not_allowed_to_evict_everything() -> None:
    log = TaskLog(max_bytes=64 << 10)
    log.record({"id": "small", "outcome": "ok"})
    huge = {"id": "big", "outcome": "ok",
            "candidates": [{"node_id": f"n{i}", "reason": "x" * 500} for i in range(200)]}
    log.record(huge)
    big = log.get("big")
    assert big is not None and big["truncated"] is True and len(big["candidates"]) == 8
    assert log.get("small") is not None


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
    log.on_task_finished(trace)
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
