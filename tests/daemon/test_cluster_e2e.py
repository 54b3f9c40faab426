"""Three real `edgesched run` processes on one real mosquitto: liveness end to end."""

from __future__ import annotations

import time

import pytest

from tests.support.broker import Mosquitto
from tests.support.nodes import wait_until

pytestmark = pytest.mark.e2e

INTERVAL = 0.3
KEEPALIVE = 2


def sees(observer, others: list[str], status: str):
    def check() -> bool:
        view = observer.neighbour_status()
        return all(view.get(o) == status for o in others)
    return check


def test_three_nodes_see_each_other_die_and_come_back(mosquitto: Mosquitto, node_factory) -> None:
    overrides = {"telemetry": {"interval_s": INTERVAL}, "mqtt": {"keepalive_s": KEEPALIVE}}
    nodes = {n: node_factory(n, broker=mosquitto, overrides=overrides) for n in "abc"}
    for node in nodes.values():
        wait_until(lambda node=node: node.status()["mqtt"]["connected"], 10, what="connected")
    # Every node lists the other two online within 3 telemetry intervals of the last connect.
    started = time.monotonic()
    for name, node in nodes.items():
        others = [o for o in nodes if o != name]
        wait_until(sees(node, others, "online"), 3 * INTERVAL + 0.5 - (time.monotonic() - started),
                   what=f"{name} sees {others} online")

    old_incarnation = nodes["c"].status()["incarnation"]
    nodes["c"].kill()  # kill -9: no goodbye, only the broker's Will / silence tell
    killed = time.monotonic()
    for name in "ab":
        wait_until(sees(nodes[name], ["c"], "offline"),
                   1.5 * KEEPALIVE + 1.0 - (time.monotonic() - killed),
                   what=f"{name} sees c offline")

    nodes["c"].start()
    wait_until(lambda: nodes["c"].status()["mqtt"]["connected"], 10, what="c reconnected")
    new_incarnation = nodes["c"].status()["incarnation"]
    assert new_incarnation > old_incarnation
    for name in "ab":
        wait_until(sees(nodes[name], ["c"], "online"), 3 * INTERVAL + 0.5,
                   what=f"{name} sees c online again")
        entry = next(n for n in nodes[name].status()["neighbours"] if n["node_id"] == "c")
        assert entry["incarnation"] == new_incarnation
    # A stale Will (old incarnation) arriving late does not take c down again.
    import json
    import subprocess

    will = {"v": 1, "node_id": "c", "status": "offline", "role": "edge",
            "incarnation": old_incarnation, "ts": 0, "task_types": [], "slots": 1}
    subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t",
                    "edgesched/node/c/state", "-m", json.dumps(will)], check=True, timeout=10)
    time.sleep(2 * INTERVAL)
    assert nodes["a"].neighbour_status()["c"] == "online"

    # A graceful stop is seen at once (offline state published before disconnecting).
    t0 = time.monotonic()
    assert nodes["b"].terminate() == 0
    assert time.monotonic() - t0 < 10
    wait_until(sees(nodes["a"], ["b"], "offline"), 2.0, what="a sees b offline after SIGTERM")


def test_mqtt_311_nodes_see_each_other_and_the_will(mosquitto: Mosquitto, node_factory) -> None:
    overrides = {"telemetry": {"interval_s": INTERVAL, "offline_after_intervals": 100},
                 "mqtt": {"keepalive_s": KEEPALIVE, "protocol": "3.1.1"}}
    a = node_factory("a311", broker=mosquitto, overrides=overrides)
    b = node_factory("b311", broker=mosquitto, overrides=overrides)
    wait_until(sees(a, ["b311"], "online"), 10, what="a311 sees b311")
    wait_until(sees(b, ["a311"], "online"), 10, what="b311 sees a311")
    b.kill()
    killed = time.monotonic()
    # silence alone would take 100 intervals: only the Will can make this deadline
    wait_until(sees(a, ["b311"], "offline"), 1.5 * KEEPALIVE + 1.0 - (time.monotonic() - killed),
               what="a311 sees b311 offline by its Will")


def test_a_neighbours_announced_speed_scales_its_priors(mosquitto: Mosquitto, node_factory) -> None:
    """Before any task ran there, a neighbour announcing speed 4 is predicted 4x faster."""
    overrides = {"telemetry": {"interval_s": INTERVAL}, "mqtt": {"keepalive_s": KEEPALIVE}}
    slow = node_factory("slow", broker=mosquitto, overrides=overrides)
    node_factory("fast", broker=mosquitto,
                 overrides={**overrides, "executor": {"speed": 4.0}})
    wait_until(sees(slow, ["fast"], "online"), 10, what="slow sees fast online")

    def exec_means() -> dict[str, float]:
        est = slow.status()["scheduler"]["estimates"]["hash"]["exec"]
        return {node: e["mean_s"] for node, e in est.items()}

    wait_until(lambda: "fast" in exec_means(), 10, what="fast among the estimates")
    means = exec_means()
    assert means["fast"] * 4 == pytest.approx(means["slow"], rel=1e-6)
