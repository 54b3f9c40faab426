"""The dispatcher's candidates: attempts sent elsewhere count against a target only until its
own report can show them, and each candidate's wait is built on the estimate it carries."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from edgesched.core.candidates import CLOUD_ID
from edgesched.core.costmodel import CostParams
from edgesched.core.estimators import EstimatorBank, ExecPrior
from edgesched.core.fallback import FallbackParams
from edgesched.core.model import ClusterSnapshot, NodeState, PowerModel, TaskSpec
from edgesched.core.policies import CostPolicy
from edgesched.node.dispatch import Dispatcher


def dispatcher(snap: ClusterSnapshot, bank: EstimatorBank | None = None) -> Dispatcher:
    return Dispatcher(
        node_id="a", executor=SimpleNamespace(queue_size=8),  # type: ignore[arg-type]
        bank=bank if bank is not None else EstimatorBank(), policy=CostPolicy(CostParams()),
        fallback=FallbackParams(),
        metrics=None,  # type: ignore[arg-type]
        snapshot=lambda task=None: snap, local_power=PowerModel(),
    )


SPEC = TaskSpec(task_type="t", input_bytes=1000.0, output_bytes=100.0, work=1000.0)


def test_only_attempts_newer_than_the_targets_last_report_count() -> None:
    snap = ClusterSnapshot(
        now=100.0,
        local=NodeState(node_id="a", last_seen=100.0),
        neighbours=(NodeState(node_id="b", last_seen=99.0),),
    )
    d = dispatcher(snap)
    for target, sent_at in (("b", 98.0), ("b", 98.5), ("b", 99.5), (CLOUD_ID, 90.0),
                            (CLOUD_ID, 99.9)):
        d.inflight.sent(target, sent_at)
    # two sent before b's last report: b counts them; the cloud reports no load: all count
    cands = {c.node_id: c for c in d.candidates(SPEC)}
    assert cands["b"].running == 1
    assert d.inflight.unreported({"b": 99.0}) == {"b": 1, CLOUD_ID: 2}


def test_a_target_whose_report_covers_everything_is_left_out() -> None:
    snap = ClusterSnapshot(
        now=10.0, local=NodeState(node_id="a"), neighbours=(NodeState(node_id="b", last_seen=9.0),)
    )
    d = dispatcher(snap)
    token = d.inflight.sent("b", 8.0)
    assert d.candidates(SPEC)[1].running == 0
    d.inflight.settled("b", token)
    d.inflight.settled("b", token)  # twice, or unknown: ignored
    assert d.inflight.unreported({}) == {}


def test_the_dispatchers_candidates_wait_on_the_estimate_they_carry() -> None:
    """Issue 16's seam bug: the daemon replaced each candidate's exec estimate (x = work)
    after its queue wait had been derived from another one (x = input_bytes)."""
    bank = EstimatorBank(exec_priors={"matmul": ExecPrior(mean_s=0.5, s_per_mb=0.2, cv=0.1)})
    snap = ClusterSnapshot(
        now=100.0, local=NodeState(node_id="a", last_seen=100.0),
        neighbours=(NodeState(node_id="b", slots=1, running=1, queued=1, last_seen=100.0),),
    )
    spec = TaskSpec(task_type="matmul", input_bytes=300.0, output_bytes=100.0, work=5.9e6)
    local, neighbour = dispatcher(snap, bank).candidates(spec)
    assert neighbour.exec.mean_s == pytest.approx(1.68)  # at x = work: 0.5 + 0.2 x 5.9 MB
    assert neighbour.est_wait_s == pytest.approx(2 * neighbour.exec.mean_s)
    assert local.exec.mean_s == pytest.approx(1.68)


def test_the_daemons_shortlist_is_chosen_for_the_task_being_decided() -> None:
    """The composition root's snapshot source hands the decided task's execution estimate to
    the shortlist (core/shortlist.py): of six idle neighbours the two fastest are scored."""
    from edgesched.core.view import ClusterView, NodeAnnouncement, NodeTelemetry, ViewParams
    from edgesched.node.service import snapshot_source

    view = ClusterView(local_id="a", params=ViewParams(interval_s=1.0))
    bank = EstimatorBank(exec_priors={"t": ExecPrior(mean_s=0.2)})
    speeds = {"b": 0.5, "c": 2.0, "d": 0.7, "e": 1.8, "f": 0.6, "g": 0.9}
    now = time.monotonic()
    for node_id, speed in speeds.items():
        view.observe_announcement(node_id, NodeAnnouncement(incarnation=1, online=True,
                                                            slots=2), now=now)
        view.observe_telemetry(node_id, NodeTelemetry(incarnation=1, slots=2), now=now)
        bank.set_speed(node_id, speed)
    local = SimpleNamespace(local_state=lambda now: NodeState(node_id="a", last_seen=now))
    source = snapshot_source(view, local, bank, max_candidates=2)  # type: ignore[arg-type]
    snap = source(SPEC)
    assert sorted(n.node_id for n in snap.neighbours) == ["c", "e"]
    assert len(source().neighbours) == 2  # without a task: the list chosen last
