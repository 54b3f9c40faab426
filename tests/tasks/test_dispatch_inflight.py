"""Tasks sent elsewhere count against a target only until its own report can show them."""

from __future__ import annotations

from types import SimpleNamespace

from edgesched.core.candidates import CLOUD_ID
from edgesched.core.model import ClusterSnapshot, NodeState
from edgesched.node.dispatch import Dispatcher


def unreported(outstanding: dict[str, dict[int, float]], snap: ClusterSnapshot) -> dict[str, int]:
    return Dispatcher._unreported(SimpleNamespace(outstanding=outstanding), snap)  # type: ignore[arg-type]


def test_only_attempts_newer_than_the_targets_last_report_count() -> None:
    snap = ClusterSnapshot(
        now=100.0,
        local=NodeState(node_id="a", last_seen=100.0),
        neighbours=(NodeState(node_id="b", last_seen=99.0),),
    )
    outstanding = {
        "b": {1: 98.0, 2: 98.5, 3: 99.5},  # two sent before b's last report: b counts them
        CLOUD_ID: {4: 90.0, 5: 99.9},  # the cloud reports no load: every attempt counts
    }
    assert unreported(outstanding, snap) == {"b": 1, CLOUD_ID: 2}


def test_a_target_whose_report_covers_everything_is_left_out() -> None:
    snap = ClusterSnapshot(
        now=10.0, local=NodeState(node_id="a"), neighbours=(NodeState(node_id="b", last_seen=9.0),)
    )
    assert unreported({"b": {1: 8.0}}, snap) == {}
