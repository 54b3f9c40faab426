"""The metrics of one node: contract names, naming rules, pre-initialisation, promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgesched.adapters.metrics import (
    CANDIDATE_REJECT_REASONS,
    NEIGHBOUR_STATUSES,
    PLACEMENTS,
    Metrics,
)
from edgesched.core.model import CandidateEval, Decision, Placement, RejectReason
from edgesched.core.view import ClusterView, NodeTelemetry, ViewParams

REPO = Path(__file__).resolve().parents[2]

# docs/contract.md §6, as exposed (counters with their _total suffix).
CONTRACT_METRICS = (
    "edgesched_tasks_submitted_total", "edgesched_decisions_total",
    "edgesched_tasks_completed_total", "edgesched_task_latency_seconds",
    "edgesched_decision_duration_seconds", "edgesched_latency_prediction_error_seconds",
    "edgesched_energy_joules_total", "edgesched_deadline_misses_total", "edgesched_neighbours",
    "edgesched_telemetry_messages_total", "edgesched_telemetry_rejected_total",
    "edgesched_mqtt_connected", "edgesched_mqtt_reconnects_total", "edgesched_tasks_running",
    "edgesched_tasks_queued", "edgesched_build_info",
)
# exposed by a node the runtime built (Metrics given its node_id and role)
NODE_METRICS = ("edgesched_node_info", "edgesched_remote_tasks_total")


def contract_names_missing(exposition: str) -> list[str]:
    """contract §6 names with no sample in `exposition` (histograms by their _count)."""
    present = {sample.name for family in text_string_to_metric_families(exposition)
               for sample in family.samples}
    return [name for name in CONTRACT_METRICS
            if name not in present and f"{name}_count" not in present]


def promtool_check_metrics(exposition: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool is not installed: run `make system-deps` (as root)")
    return subprocess.run([promtool, "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=60, check=False)


def test_fresh_node_exposes_every_contract_name() -> None:
    text = Metrics().exposition().decode()
    assert contract_names_missing(text) == []


def test_fresh_exposition_passes_promtool() -> None:
    proc = promtool_check_metrics(Metrics().exposition().decode())
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_naming_rules() -> None:
    text = Metrics().exposition().decode()
    assert "_created" not in text, "no *_created series"
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("edgesched_"):
            continue  # process_* come from prometheus_client's ProcessCollector
        assert re.fullmatch(r"edgesched_[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        assert not re.search(r"_(ms|milliseconds|minutes|kb|mb|percent)\b", family.name)


def test_labelled_metrics_are_preinitialised() -> None:
    registry = Metrics().registry
    for placement in PLACEMENTS:
        assert registry.get_sample_value("edgesched_decisions_total",
                                         {"placement": placement}) == 0
        assert registry.get_sample_value("edgesched_task_latency_seconds_count",
                                         {"placement": placement, "type": "other"}) == 0
        for reason in CANDIDATE_REJECT_REASONS:
            assert registry.get_sample_value(
                "edgesched_candidates_rejected_total",
                {"placement": placement, "reason": reason}) == 0
    for status in NEIGHBOUR_STATUSES:
        assert registry.get_sample_value("edgesched_neighbours", {"status": status}) == 0


def _eval(node: str, placement: Placement, reason: RejectReason | None) -> CandidateEval:
    return CandidateEval(
        node_id=node, placement=placement, latency_mean_s=0.1, latency_q_s=0.2,
        energy_j=1.0, money=0.0, score=0.1 if reason is None else float("inf"),
        feasible=reason is None, reason=reason,
    )


def test_count_rejected_candidates() -> None:
    metrics = Metrics()
    chosen = _eval("gw-2", Placement.NEIGHBOUR, None)
    decision = Decision(policy="cost", chosen=chosen, fallbacks=(), evaluations=(
        chosen,
        _eval("gw-1", Placement.LOCAL, RejectReason.NO_CAPACITY),
        _eval("cloud", Placement.CLOUD, RejectReason.OFFLOAD_POLICY),
        _eval("gw-3", Placement.NEIGHBOUR, RejectReason.NO_CAPACITY),
    ))
    metrics.count_rejected_candidates(decision)
    metrics.count_rejected_candidates(decision)

    def value(placement: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "edgesched_candidates_rejected_total", {"placement": placement, "reason": reason})

    assert value("local", "no_capacity") == 2
    assert value("cloud", "offload_policy") == 2
    assert value("neighbour", "no_capacity") == 2
    assert value("neighbour", "deadline") == 0


def test_cluster_view_gauges_read_at_scrape_time() -> None:
    metrics = Metrics()
    view = ClusterView(local_id="gw-1", params=ViewParams(interval_s=1.0))
    clock = [100.0]
    metrics.bind_cluster_view(view, lambda: clock[0])
    sample = metrics.registry.get_sample_value
    assert sample("edgesched_neighbour_telemetry_max_age_seconds") == 0
    view.observe_telemetry("gw-2", NodeTelemetry(incarnation=1), now=100.0)
    view.observe_telemetry("gw-3", NodeTelemetry(incarnation=1), now=98.0)
    view.observe_device("cam-1", {"battery": 0.5}, now=99.0)
    clock[0] = 101.0
    assert sample("edgesched_neighbour_telemetry_max_age_seconds") == pytest.approx(3.0)
    assert sample("edgesched_devices") == 1
    clock[0] = 200.0  # both offline now: their age no longer counts
    assert sample("edgesched_neighbour_telemetry_max_age_seconds") == 0


def test_docs_list_every_metric() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in doc, f"docs/metrics.md does not describe {name}"


def test_node_info_names_the_node() -> None:
    from edgesched import __version__

    registry = Metrics(node_id="gw-7", role="edge").registry
    assert registry.get_sample_value(
        "edgesched_node_info", {"node_id": "gw-7", "role": "edge", "version": __version__}) == 1
    text = Metrics(node_id="gw-7", role="edge").exposition().decode()
    for name in NODE_METRICS:
        assert name in text


def test_type_label_is_bounded_by_the_configured_types() -> None:
    metrics = Metrics(task_types=("echo", "hash"))
    metrics.completed("local", "ok", "echo")
    metrics.completed("local", "ok", "made-up-by-a-client")
    metrics.completed("none", "rejected", None)
    sample = metrics.registry.get_sample_value
    assert sample("edgesched_tasks_completed_total",
                  {"placement": "local", "status": "ok", "type": "echo"}) == 1
    assert sample("edgesched_tasks_completed_total",
                  {"placement": "local", "status": "ok", "type": "other"}) == 1
    assert sample("edgesched_tasks_completed_total",
                  {"placement": "none", "status": "rejected", "type": "other"}) == 1
    types = {s.labels["type"] for family in metrics.registry.collect()
             for s in family.samples if "type" in s.labels}
    assert types == {"echo", "hash", "other"}
    many = Metrics(task_types=[f"t{i:03d}" for i in range(100)])
    assert len(many.task_types) == 32
    assert many.type_label("t099") == "other"
