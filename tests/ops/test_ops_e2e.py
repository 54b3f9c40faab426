"""Operations end to end, with real `edgesched run` processes and a real mosquitto.

- a node whose event loop blocks past `watchdog.stall_limit_s` exits non-zero by itself, and
  does not when systemd's watchdog is in charge;
- after real tasks ran through every placement (local, neighbour, cloud), each node's
  /metrics passes `promtool check metrics` and holds every contract §6 name.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.test_metrics import NODE_METRICS, contract_names_missing, promtool_check_metrics
from tests.support.broker import Mosquitto
from tests.support.nodes import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

BLOCK_TYPE = {"block": {"handler": "python:tests.ops.blocker:block", "offload": "local",
                        "timeout_s": 60}}


def post_task(node: NodeProcess, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """POST /v1/tasks and return the reply document."""
    request = urllib.request.Request(
        node.base_url + "/v1/tasks", data=json.dumps({"v": 1, **body}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        reply = json.loads(exc.read())
    return reply


def post_in_background(node: NodeProcess, body: dict[str, Any]) -> threading.Thread:
    """Submit without waiting for the reply (which may never come: the node may die)."""

    def submit() -> None:
        # A connection reset by a node that exited is expected in the stall test.
        with contextlib.suppress(OSError, ValueError):
            post_task(node, body, timeout=60.0)

    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    return thread


def test_daemon_exits_non_zero_when_its_event_loop_stalls(
    mosquitto: Mosquitto, node_factory: Any
) -> None:
    node: NodeProcess = node_factory("gw-stall", broker=mosquitto, overrides={
        "watchdog": {"stall_limit_s": 1.0}, "task_types": BLOCK_TYPE,
    })
    post_in_background(node, {"type": "block", "input": {"seconds": 20}})
    assert node.proc is not None
    code = node.proc.wait(timeout=15)  # far below the 20 s block: the guard ended it
    log = node.log_text()
    assert code == 1, f"exit code {code}\n{log[-3000:]}"
    assert "event loop stalled" in log
    assert "blocker.py" in log, "the log shows where the loop was stuck"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[Path]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield path
    finally:
        sock.close()


def test_stall_guard_stands_down_under_systemd_watchdog(
    mosquitto: Mosquitto, node_factory: Any, notify_socket: Path
) -> None:
    node: NodeProcess = node_factory(
        "gw-systemd", broker=mosquitto,
        overrides={"watchdog": {"stall_limit_s": 0.5}, "task_types": BLOCK_TYPE},
        env={"NOTIFY_SOCKET": str(notify_socket), "WATCHDOG_USEC": "60000000"},
    )
    reply = post_task(node, {"type": "block", "input": {"seconds": 2}})
    assert reply["status"] == "ok", reply
    assert node.running, "systemd's watchdog decides, not the stall guard"
    assert "stall guard off" in node.log_text()


def _saturate(node: NodeProcess, seconds: float) -> threading.Thread:
    """Occupy the node's only slot with a local sleep task."""
    thread = post_in_background(node, {"type": "hold", "input": {"seconds": seconds}})
    wait_until(lambda: node.status()["tasks"]["running"] >= 1, 20, what=f"{node.node_id} busy")
    return thread


def _seen_busy(observer: NodeProcess, node_id: str) -> bool:
    for neighbour in observer.status()["neighbours"]:
        if neighbour["node_id"] == node_id:
            return bool(neighbour["running"] >= neighbour["slots"])
    return False


def test_scrape_after_every_placement_passes_promtool(
    mosquitto: Mosquitto, node_factory: Any
) -> None:
    cloud: NodeProcess = node_factory("cloud-1", broker=mosquitto, overrides={"role": "cloud"})
    # One slot, no queue: a single `hold` task makes a node full, so placements are forced.
    types = {"hold": {"handler": "builtin:sleep", "offload": "local"},
             "nbecho": {"handler": "builtin:echo", "offload": "neighbours"}}
    edge = {"executor": {"slots": 1, "queue_size": 0}, "task_types": types,
            "cloud": {"url": cloud.base_url}}
    a: NodeProcess = node_factory("gw-a", broker=mosquitto, overrides=edge)
    b: NodeProcess = node_factory("gw-b", broker=mosquitto, overrides=edge)
    wait_until(lambda: a.neighbour_status().get("gw-b") == "online", 20, what="a sees b")

    placements = [post_task(a, {"type": "echo", "input": {"n": 1}})["placement"]]
    _saturate(a, 15.0)
    wait_until(lambda: _seen_busy(b, "gw-a"), 15, what="b sees a busy")
    reply = post_task(a, {"type": "nbecho", "input": {"n": 2}})
    placements.append(reply["placement"])
    _saturate(b, 15.0)
    wait_until(lambda: _seen_busy(a, "gw-b"), 15, what="a sees b busy")
    reply = post_task(a, {"type": "echo", "input": {"n": 3}})
    placements.append(reply["placement"])
    assert placements == ["local", "neighbour", "cloud"], placements

    for node in (a, b, cloud):
        text = node.metrics_text()
        proc = promtool_check_metrics(text)
        assert proc.returncode == 0, f"{node.node_id}: {proc.stdout}{proc.stderr}"
        assert proc.stdout + proc.stderr == "", f"{node.node_id}: {proc.stdout}{proc.stderr}"
        assert contract_names_missing(text) == [], node.node_id
        assert all(name in text for name in NODE_METRICS), node.node_id
    for placement, task_type in (("local", "echo"), ("neighbour", "nbecho"),
                                 ("cloud", "echo")):
        done = a.metric("edgesched_tasks_completed_total", placement=placement, status="ok",
                        type=task_type)
        assert done is not None and done >= 1, placement
        latency = a.metric("edgesched_task_latency_seconds_count", placement=placement,
                           type=task_type)
        assert latency is not None and latency >= 1, placement
    online = a.metric("edgesched_neighbours", status="online")
    assert online is not None and online >= 1
