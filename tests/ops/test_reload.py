"""SIGHUP on a real node: it stays up, logs each reloaded key, and the new values are in effect;
keys that need a restart are named; an invalid config is refused and the old one kept."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from tests.support.broker import Mosquitto
from tests.support.nodes import deep_merge, wait_until

pytestmark = pytest.mark.e2e


def post_task(node: Any, doc: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(node.base_url + "/v1/tasks", data=json.dumps(doc).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def rewrite(node: Any, changes: dict[str, Any]) -> None:
    node.config_path.write_text(yaml.safe_dump(deep_merge(node.config, changes)))


def hup_and_wait(node: Any, line: str) -> None:
    """SIGHUP, then wait (bounded) until the node logged `line`."""
    start = len(node.log_text())
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: line in node.log_text()[start:], 10, what=f"log line {line!r}")


def test_sighup_reloads_policy_task_types_and_log_level(mosquitto: Mosquitto,
                                                        node_factory: Any) -> None:
    node = node_factory("gw-1", broker=mosquitto, overrides={"executor": {"slots": 2}})
    assert node.status()["scheduler"]["policy"] == "cost"
    assert post_task(node, {"type": "sleep", "input": {"seconds": 0.6}})["status"] == "ok"

    rewrite(node, {"policy": {"name": "local", "energy_weight": 0.5},
                   "task_types": {"sleep": {"timeout_s": 0.2}},
                   "mqtt": {"keepalive_s": 7},  # needs a restart
                   "log": {"level": "DEBUG"}})
    hup_and_wait(node, "reloaded task_types.sleep.timeout_s 90.0 -> 0.2")
    log = node.log_text()
    assert "reloaded policy.name cost -> local" in log
    assert "reloaded policy.energy_weight 0.002 -> 0.5" in log
    assert "reloaded log.level INFO -> DEBUG" in log
    assert "need a restart to take effect" in log and "mqtt.keepalive_s" in log
    assert node.running
    # no Last Will fired: the retained state still says online, the connection never dropped
    retained = subprocess.run(["mosquitto_sub", "-p", str(mosquitto.port), "-t",
                               "edgesched/node/gw-1/state", "-C", "1", "-W", "5"],
                              capture_output=True, check=True, timeout=10)
    assert json.loads(retained.stdout)["status"] == "online"
    assert node.metric("edgesched_mqtt_reconnects_total") == 0

    # in effect: the policy serves the status and decides; the new timeout cuts a 0.6 s sleep
    scheduler = node.status()["scheduler"]
    assert scheduler["policy"] == "local" and scheduler["policy_params"]["energy_weight"] == 0.5
    reply = post_task(node, {"type": "sleep", "input": {"seconds": 0.6}})
    assert reply["status"] == "failed", reply
    assert node.status()["scheduler"]["decisions"][-1]["policy"] == "local"
    assert post_task(node, {"type": "echo", "input": 1})["status"] == "ok"

    # An invalid config is refused whole; the running one stays.
    rewrite(node, {"policy": {"name": "cost", "energy_weight": -1}})
    hup_and_wait(node, "reload refused, the running configuration is kept: policy.energy_weight")
    assert node.status()["scheduler"]["policy"] == "local"
    # A task type added and one disabled: in effect at once, and announced to neighbours.
    rewrite(node, {"policy": {"name": "cost"}, "log": {"level": "WARNING"}, "task_types": {
        "sleep": {"timeout_s": 0.2}, "echo2": {"handler": "builtin:echo"},
        "matmul": {"enabled": False}}})
    hup_and_wait(node, "reloaded policy.name local -> cost")
    log = node.log_text()
    assert "reloaded task_types.echo2: added" in log
    assert "reloaded task_types.matmul: disabled" in log
    assert "reloaded log.level DEBUG -> WARNING" in log  # logged before the quieter level
    assert node.status()["scheduler"]["policy"] == "cost"
    assert post_task(node, {"type": "echo2", "input": [7]})["result"] == [7]
    refused = post_task(node, {"type": "matmul", "input": {"n": 4}})
    assert refused["status"] == "rejected" and "unknown task type" in refused["error"], refused
    state = subprocess.run(["mosquitto_sub", "-p", str(mosquitto.port), "-t",
                            "edgesched/node/gw-1/state", "-C", "1", "-W", "5"],
                           capture_output=True, check=True, timeout=10)
    assert sorted(json.loads(state.stdout)["task_types"]) == ["echo", "echo2", "hash", "sleep"]
    # A running type's handler cannot change without a restart: named, the old one kept.
    rewrite(node, {"task_types": {"echo2": {"handler": "builtin:hash"}, "sleep": {
        "timeout_s": 0.2}, "matmul": {"enabled": False}}, "log": {"level": "WARNING"}})
    hup_and_wait(node, "task_types.echo2.handler")
    assert "need a restart to take effect" in node.log_text()
    assert post_task(node, {"type": "echo2", "input": [8]})["result"] == [8]
    # A new type whose handler cannot be loaded: the whole reload is refused.
    rewrite(node, {"policy": {"name": "local"}, "task_types": {
        "nope": {"handler": "python:no_such_module_h2:run"}}, "log": {"level": "WARNING"}})
    hup_and_wait(node, "reload refused, the running configuration is kept")
    assert "task_types.nope.handler" in node.log_text()
    assert node.status()["scheduler"]["policy"] == "cost"
    assert post_task(node, {"type": "echo2", "input": [9]})["result"] == [9]

    assert node.running and node.terminate() == 0
    assert "Traceback" not in node.log_text()
