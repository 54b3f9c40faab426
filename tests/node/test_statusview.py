"""`edgesched status` on a terminal: recent decisions, one task, and inert strings."""

from __future__ import annotations

import io

from rich.console import Console

from edgesched.node.statusview import render_status, render_task


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, force_terminal=False, color_system=None), out


def test_status_shows_recent_decisions_with_candidates() -> None:
    console, out = _console()
    render_status({
        "node_id": "gw-1", "role": "edge", "mqtt": {"connected": True},
        "tasks": {"running": 0, "queued": 0, "slots": 2}, "neighbours": [], "devices": [],
        "scheduler": {"policy": "cost", "links": {"cloud": {"rtt_s": 0.05, "rtt_std_s": 0.01,
                                                            "bandwidth_bps": 2e7}},
                      "decisions": [{"id": "t-9", "type": "hash", "age_s": 1.5,
                                     "chosen": "cloud", "status": "ok", "predicted_s": 0.2,
                                     "actual_s": 0.25, "candidates": [
                                         {"node_id": "gw-1", "score": None,
                                          "reason": "deadline"},
                                         {"node_id": "cloud", "score": 0.2, "reason": None}]}]},
        "recent_tasks": {"tasks": 3, "bytes": 900, "max_bytes": 4096, "last": [
            {"id": "t-8", "type": "echo", "age_s": 0.5, "outcome": "failed",
             "placement": "neighbour", "executed_by": "gw-2", "latency_s": 0.01}]},
    }, console)
    text = out.getvalue()
    for part in ("recent decisions", "t-9", "hash", "gw-1: - (deadline)", "cloud: 0.2",
                 "policy=cost", "links", "50", "3 finished task(s) kept", "recent tasks",
                 "t-8", "failed", "gw-2"):
        assert part in text, (part, text)


def test_task_view_and_no_markup_from_the_node() -> None:
    console, out = _console()
    render_task({
        "id": "[bold red]evil\x1b[2J", "type": "echo", "node_id": "gw-1", "role": "edge",
        "outcome": "ok", "placement": "cloud", "executed_by": "cloud-1", "latency_s": 0.25,
        "decision": {"policy": "cost", "chosen": "cloud", "score": 0.2,
                     "why": "cloud had the lowest score (0.2) among 1 feasible candidate(s)"},
        "candidates": [{"node_id": "gw-1", "placement": "local", "feasible": False,
                        "reason": "deadline"},
                       {"node_id": "cloud", "placement": "cloud", "feasible": True,
                        "score": 0.2}],
        "attempts": [{"target": "cloud", "placement": "cloud", "result": "ok",
                      "started_after_s": 0.001, "duration_s": 0.24}],
    }, console)
    text = out.getvalue()
    assert "[bold red]evil?[2J" in text and "\x1b" not in text
    for part in ("lowest score", "deadline", "* cloud", "attempts", "0.24", "cloud-1"):
        assert part in text, (part, text)


def test_status_says_when_the_cloud_uplink_is_degraded_and_probed() -> None:
    base = {"node_id": "gw-1", "role": "edge", "mqtt": {"connected": True},
            "tasks": {"running": 0, "queued": 0, "slots": 2}, "neighbours": [], "devices": []}
    console, out = _console()
    render_status({**base, "scheduler": {"policy": "cost", "uplink_probe": {
        "degraded": True, "interval_s": 15.0, "probes": 2, "failed": 1, "last": "degraded",
        "last_age_s": 4.2}}}, console)
    assert "cloud uplink degraded: probed (every 15 s; 2 probes, 1 failed, last degraded " \
           "4.2 s ago)" in out.getvalue()
    console, out = _console()  # healthy and never probed: nothing to say
    render_status({**base, "scheduler": {"policy": "cost", "uplink_probe": {
        "degraded": False, "interval_s": 10.0, "probes": 0, "failed": 0, "last": None,
        "last_age_s": None}}}, console)
    assert "cloud uplink" not in out.getvalue()
