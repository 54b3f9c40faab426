"""The shipped Prometheus alert rules: they load (`promtool check rules`), their unit tests
pass (`promtool test rules`), and each alert tells the operator what to check."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "packaging" / "prometheus" / "alerts.test.yml"
# issue #18: node down, MQTT disconnected, deadline-miss ratio, queue saturation, event-loop
# lag, neighbours offline, spool shed or message drops rising
REQUIRED = {
    "EdgeschedNodeDown", "EdgeschedMqttDisconnected", "EdgeschedDeadlineMissRatioHigh",
    "EdgeschedQueueSaturated", "EdgeschedEventLoopLag", "EdgeschedNeighboursOffline",
    "EdgeschedSpoolShedding", "EdgeschedMessagesDropped",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed: run `make system-deps` (as root)")
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=RULES.parent)


def alerts() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout


def test_rule_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_required_alert_ships_and_is_tested() -> None:
    names = {str(rule["alert"]) for rule in alerts()}
    assert names >= REQUIRED, f"missing alerts: {REQUIRED - names}"
    tested = RULE_TESTS.read_text(encoding="utf-8")
    for name in names:
        assert f"alertname: {name}\n" in tested, f"{name} has no promtool unit test"


def test_every_alert_says_what_to_check() -> None:
    for rule in alerts():
        annotations = rule.get("annotations")
        assert isinstance(annotations, dict), rule["alert"]
        assert annotations.get("summary"), f"{rule['alert']}: no summary"
        description = str(annotations.get("description", ""))
        assert "check" in description.lower(), f"{rule['alert']}: says nothing to check"
        labels = rule.get("labels")
        assert isinstance(labels, dict) and labels.get("severity") in ("critical", "warning")
        assert "edgesched_node_info" in str(rule["expr"]), f"{rule['alert']}: names no node"
