"""Operator configs: Prometheus scrape config, Grafana dashboard, and the compose file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgesched.adapters.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
DASHBOARD = CONFIGS / "grafana" / "edgesched.json"
# Labels Prometheus adds to every series (no target labels in configs/prometheus.yml: the node
# id comes from edgesched_node_info) and `le`.
TARGET_LABELS = {"instance", "job", "le"}
NODE_JOIN = 'on (job, instance) group_left (node_id) edgesched_node_info{node_id=~"$node"}'



def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed: run `make system-deps` (as root)")
    return found


def _series_labels() -> dict[str, set[str]]:
    """Every sample name a fresh node exposes, with its label names (histograms included)."""
    names: dict[str, set[str]] = {}
    metrics = Metrics(node_id="gw-1", role="edge", task_types=("echo", "hash"))
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def _expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def test_prometheus_config_passes_promtool() -> None:
    proc = subprocess.run(
        [_promtool(), "check", "config", str(CONFIGS / "prometheus.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_only_metrics_that_exist() -> None:
    series = _series_labels()
    expressions = _expressions()
    assert len(expressions) >= 10
    for title, expr in expressions:
        names = re.findall(r"\bedgesched_[a-z_]+\b", expr)
        assert names, f"{title}: queries no edgesched metric: {expr}"
        for name in names:
            assert name in series, f"{title}: {name} is not exposed by Metrics"
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr)
                   for label in group.split(",")}
        selected = set(re.findall(r"(\w+)=~?\"", expr))
        known = set().union(*(series[name] for name in names)) | TARGET_LABELS
        unknown = (grouped | selected) - known
        assert not unknown, f"{title}: labels {unknown} exist on none of {names}"


def test_dashboard_names_nodes_by_node_info() -> None:
    """Every query is filtered by $node through edgesched_node_info (no host-based label),
    and $node takes its values from edgesched_node_info."""
    for title, expr in _expressions():
        assert NODE_JOIN in expr, f"{title}: not joined on edgesched_node_info: {expr}"
        assert not re.search(r"\bnode\b\s*[=!]", expr), f"{title}: uses a `node` label"
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    node = next(v for v in dashboard["templating"]["list"] if v["name"] == "node")
    assert node["definition"] == "label_values(edgesched_node_info, node_id)"


def test_prometheus_config_makes_no_node_label() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "edgesched")
    assert "relabel_configs" not in job
    assert all("labels" not in group for group in job["static_configs"])


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana variables substituted)."""
    rules = [
        {"record": f"edgesched:panel_{i}",
         "expr": expr.replace("$__rate_interval", "1m").replace("$node", ".*")}
        for i, (_, expr) in enumerate(_expressions())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([_promtool(), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    by_title = {panel["title"]: panel for panel in dashboard["panels"]}
    wanted = {
        "Placements over time": "edgesched_decisions_total",
        "Task latency percentiles by placement": "edgesched_task_latency_seconds_bucket",
        "Deadline misses": "edgesched_deadline_misses_total",
        "Energy spent on tasks": "edgesched_energy_joules_total",
        "Neighbours by status": "edgesched_neighbours",
        "Latency prediction error": "edgesched_latency_prediction_error_seconds_bucket",
    }
    for title, metric in wanted.items():
        assert title in by_title, f"missing panel {title!r}"
        assert any(metric in t["expr"] for t in by_title[title]["targets"]), title
    latency = by_title["Task latency percentiles by placement"]["targets"]
    assert all("histogram_quantile" in t["expr"] and "placement" in t["expr"] for t in latency)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIGS / "compose.yaml").read_text())
    return data


def _node_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {name: svc for name, svc in services.items()
            if svc.get("image", "").startswith("edgesched")}


def test_compose_runs_broker_two_edges_a_cloud_and_prometheus() -> None:
    compose = _compose()
    services = compose["services"]
    assert "mosquitto" in services and "prometheus" in services
    roles = {name: svc["environment"].get("EDGESCHED_ROLE", "edge")
             for name, svc in _node_services().items()}
    assert sorted(roles.values()) == ["cloud", "edge", "edge"], roles
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (CONFIGS / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_compose_nodes_have_valid_configs(tmp_path: Path) -> None:
    """Each node's environment and Docker secrets over the image's config pass
    `edgesched check-config`; without its secrets a node refuses to serve 0.0.0.0 (exit 78)."""
    exe = str(Path(sys.executable).parent / "edgesched")
    compose_secrets = _compose()["secrets"]
    for name, svc in _node_services().items():
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "EDGESCHED_CONFIG": str(CONFIGS / "docker" / "edgesched.yaml"),
               **{key: str(value) for key, value in svc["environment"].items()}}
        bare = subprocess.run([exe, "check-config"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert bare.returncode == 78 and "http.host" in bare.stderr, f"{name}: {bare.stderr}"
        # what Docker mounts: /run/secrets/<target> with the content of the secret's source
        run_secrets = tmp_path / name / "secrets"
        run_secrets.mkdir(parents=True)
        targets = {}
        for ref in svc["secrets"]:
            assert ref["source"] in compose_secrets, f"{name}: undeclared secret {ref}"
            targets[ref["target"]] = ref["source"]
            (run_secrets / ref["target"]).write_text(f"token-of-{ref['source']}-0123456789\n")
        env["CREDENTIALS_DIRECTORY"] = str(run_secrets)
        proc = subprocess.run([exe, "check-config"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        assert "token-of" not in proc.stdout, "secrets are masked"
        effective = yaml.safe_load(proc.stdout)
        assert effective["node_id"] == name, "node id = service name = scrape target host"
        assert effective["http"]["host"] == "0.0.0.0"
        assert effective["http"]["token"] == "********", f"{name}: no http_token secret"
        if effective["role"] == "edge":
            assert effective["cloud"]["url"], f"{name}: edge node without cloud.url"
            cloud = next(s for s in _node_services().values()
                         if s["environment"].get("EDGESCHED_ROLE") == "cloud")
            cloud_http = {r["target"]: r["source"] for r in cloud["secrets"]}["http_token"]
            assert targets.get("cloud_token") == cloud_http, (
                f"{name}: its cloud_token must be the cloud node's http_token")


def test_prometheus_scrapes_every_compose_node() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "edgesched")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    port = yaml.safe_load((CONFIGS / "docker" / "edgesched.yaml").read_text())["http"]["port"]
    assert targets == {f"{name}:{port}" for name in _node_services()}
