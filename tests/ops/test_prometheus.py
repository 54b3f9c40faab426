"""A real Prometheus scraping a real cluster: two edge nodes and a cloud node on one host.

One cluster (mosquitto, `gw-a`, `gw-b`, `cloud-1`, all real processes) and one `prometheus`
(a free loopback port, a generated config, a tmp storage dir, 0.5 s scrapes, the shipped
alert rules) are shared by the module. A client submits a known number of tasks, spread by
`gw-a`'s round-robin policy over itself, its neighbour and the cloud tier, then:

- each node's /metrics counts every task once (submitted only where the client submitted it,
  work for another node in edgesched_remote_tasks_total) — issue #18 found the cloud node
  counting each task it ran again (594 "submissions" for 394); candidates a type's offload
  policy rules out are counted (`reason="offload_policy"`); the cloud node is no neighbour;
- through Prometheus's query API: `count by (node_id) (edgesched_node_info)` has 3 series,
  `sum(edgesched_tasks_submitted_total)` is the number submitted, every panel query of
  configs/grafana/edgesched.json parses and returns data, and the alert rules of
  packaging/prometheus/alerts.yml load and evaluate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.broker import Mosquitto, free_listen_port
from tests.support.nodes import NodeProcess, http_get, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "edgesched.json"
ALERTS = REPO / "packaging" / "prometheus" / "alerts.yml"
SCRAPE_S = 0.5
# What the client sends: to gw-a (round robin over gw-a, gw-b and the cloud), to gw-b (its
# cost policy), one task of a type that may not leave gw-a (its offload policy rules out gw-b
# and the cloud), one submission gw-a refuses (unknown type: still a submission, answered), and
# one a client sends to the cloud node itself (a submission there, unlike the edges' tasks).
TO_A, TO_B, LOCAL_ONLY, REFUSED, TO_CLOUD = 9, 3, 1, 1, 1
SUBMITTED = TO_A + TO_B + LOCAL_ONLY + REFUSED + TO_CLOUD


@dataclass
class Cluster:
    a: NodeProcess
    b: NodeProcess
    cloud: NodeProcess
    replies: list[dict[str, Any]]

    @property
    def nodes(self) -> tuple[NodeProcess, ...]:
        return (self.a, self.b, self.cloud)


def post_task(node: NodeProcess, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        node.base_url + "/v1/tasks", data=json.dumps({"v": 1, **body}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        reply = json.loads(exc.read())
    return reply


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    broker = Mosquitto(workdir=workdir)
    broker.start()
    nodes: list[NodeProcess] = []
    try:
        cloud = NodeProcess(workdir, "cloud-1", broker=broker, overrides={"role": "cloud"})
        nodes.append(cloud.start(wait=False))
        edge = {"cloud": {"url": cloud.base_url},
                "task_types": {"pinned": {"handler": "builtin:echo", "offload": "local"}}}
        a = NodeProcess(workdir, "gw-a", broker=broker,
                        overrides={**edge, "policy": {"name": "round_robin"}})
        b = NodeProcess(workdir, "gw-b", broker=broker, overrides=edge)
        nodes += [a.start(wait=False), b.start(wait=False)]
        for node in nodes:
            node.wait_healthy(30)
        wait_until(lambda: a.neighbour_status() == {"gw-b": "online", "cloud-1": "online"},
                   20, what="gw-a sees gw-b and the cloud node online")
        replies = [post_task(a, {"type": "echo", "input": {"n": i}}) for i in range(TO_A)]
        replies += [post_task(b, {"type": "echo", "input": {"n": i}}) for i in range(TO_B)]
        replies += [post_task(a, {"type": "pinned", "input": {"n": i}})
                    for i in range(LOCAL_ONLY)]
        replies += [post_task(a, {"type": "no-such-type", "input": {}})
                    for _ in range(REFUSED)]
        replies += [post_task(cloud, {"type": "echo", "input": {"n": i}})
                    for i in range(TO_CLOUD)]
        yield Cluster(a=a, b=b, cloud=cloud, replies=replies)
    finally:
        for node in nodes:
            try:
                node.terminate(timeout=5)
            except Exception:  # teardown must reach every node
                node.kill()
        broker.stop()


def test_the_client_got_a_reply_for_every_task_from_every_placement(cluster: Cluster) -> None:
    statuses = [r["status"] for r in cluster.replies]
    assert statuses.count("ok") == TO_A + TO_B + LOCAL_ONLY + TO_CLOUD, cluster.replies
    assert statuses.count("rejected") == REFUSED
    placements = {r.get("placement") for r in cluster.replies[:TO_A]}
    assert placements == {"local", "neighbour", "cloud"}, cluster.replies[:TO_A]


def _sum(node: NodeProcess, name: str, **labels: str) -> float:
    """The sum of every sample `name` of `node` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(node.metrics_text())
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


def test_every_task_is_counted_once_on_the_node_it_was_submitted_to(cluster: Cluster) -> None:
    a, b, cloud = cluster.a, cluster.b, cluster.cloud
    submitted = {n.node_id: _sum(n, "edgesched_tasks_submitted_total") for n in cluster.nodes}
    assert submitted == {"gw-a": TO_A + LOCAL_ONLY + REFUSED, "gw-b": TO_B,
                         "cloud-1": TO_CLOUD}, submitted
    completed = {n.node_id: _sum(n, "edgesched_tasks_completed_total") for n in cluster.nodes}
    assert completed == submitted, "every submitted task completes once, where submitted"
    by_placement = {p: _sum(a, "edgesched_tasks_completed_total", placement=p, status="ok",
                            type="echo") for p in ("local", "neighbour", "cloud")}
    sent = {p: sum(1 for r in cluster.replies[:TO_A] if r["placement"] == p)
            for p in by_placement}
    assert by_placement == sent, by_placement
    assert _sum(a, "edgesched_tasks_completed_total", placement="none", status="rejected",
                type="other") == REFUSED
    # the work gw-b and the cloud node did for gw-a, counted apart
    remote = {"gw-b": _sum(b, "edgesched_remote_tasks_total", origin_kind="neighbour"),
              "cloud-1": _sum(cloud, "edgesched_remote_tasks_total", origin_kind="edge",
                              status="ok")}
    assert remote == {"gw-b": sent["neighbour"], "cloud-1": sent["cloud"]}, (remote, sent)
    assert _sum(cloud, "edgesched_tasks_completed_total", placement="local",
                status="ok") == TO_CLOUD, "only the client's own task is the cloud's"
    assert _sum(cloud, "edgesched_task_latency_seconds_count") == TO_CLOUD
    # the cloud node is no neighbour of gw-a: gw-b is its only one (whatever its liveness at
    # this moment on a loaded host). The gauge is refreshed once per telemetry interval: wait
    # for a refresh that saw both, then check it never counts the cloud node.
    wait_until(lambda: _sum(a, "edgesched_neighbours") >= 1, 5, 0.1,
               what="gw-a's neighbour gauge refreshed")
    assert _sum(a, "edgesched_neighbours") == 1
    # the pinned type's offload policy ruled out gw-b and the cloud, and says so
    for placement in ("neighbour", "cloud"):
        assert _sum(a, "edgesched_candidates_rejected_total", placement=placement,
                    reason="offload_policy") == LOCAL_ONLY, placement


# -- Prometheus -------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}", timeout=5.0)
        doc = json.loads(body) if body else {}
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"GET /api/v1/{path} {params}: HTTP {status} {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [
            {"value": data["result"]}]
        return result


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("prometheus is not installed: run `make system-deps` (as root)")
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_listen_port()
    config = {
        "global": {"scrape_interval": f"{int(SCRAPE_S * 1000)}ms",
                   "scrape_timeout": f"{int(SCRAPE_S * 1000)}ms",
                   "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        # the shipped job name (the alert rules select up{job="edgesched"}), no node labels
        "scrape_configs": [{"job_name": "edgesched", "static_configs": [{"targets": [
            f"127.0.0.1:{node.http_port}" for node in cluster.nodes]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    prom = Prometheus(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            return http_get(prom.url + "/-/ready", timeout=1.0)[0] == 200

        wait_until(ready, 20, 0.1, what="prometheus ready")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_names_three_nodes_and_counts_each_task_once(
        prometheus: Prometheus) -> None:
    def scraped() -> bool:
        up = prometheus.query('sum(up{job="edgesched"})')
        return _value(up) == 3

    wait_until(scraped, 15, 0.2, what="all three nodes scraped")
    nodes = prometheus.query("count by (node_id) (edgesched_node_info)")
    assert sorted(r["metric"]["node_id"] for r in nodes) == ["cloud-1", "gw-a", "gw-b"]
    roles = prometheus.query("edgesched_node_info")
    assert {r["metric"]["node_id"]: r["metric"]["role"] for r in roles} == {
        "gw-a": "edge", "gw-b": "edge", "cloud-1": "cloud"}
    assert _value(prometheus.query("sum(edgesched_tasks_submitted_total)")) == SUBMITTED
    assert _value(prometheus.query("sum(edgesched_tasks_completed_total)")) == SUBMITTED
    per_node = prometheus.query(
        "sum by (node_id) (edgesched_tasks_submitted_total"
        " * on (job, instance) group_left (node_id) edgesched_node_info)")
    assert {r["metric"]["node_id"]: float(r["value"][1]) for r in per_node} == {
        "gw-a": TO_A + LOCAL_ONLY + REFUSED, "gw-b": TO_B, "cloud-1": TO_CLOUD}


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    """Each panel query, as Grafana sends it ($node = All), parses and returns series; a
    `> 0` display filter is dropped first (a healthy cluster has nothing to show there)."""
    def scraped_thrice() -> bool:
        scrapes = _value(prometheus.query("min(count_over_time(up[1m]))"))
        return scrapes is not None and scrapes >= 3

    wait_until(scraped_thrice, 15, 0.2, what="three scrapes of every node (rate() needs two)")
    queries = _panel_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        expr = expr.replace("$__rate_interval", "1m").replace("$node", ".*")
        expr = expr.removesuffix(" > 0")
        if not prometheus.query(expr):
            empty.append(f"{title}: {expr}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_the_alert_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    shipped = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    names = {rule["alert"] for group in shipped["groups"] for rule in group["rules"]}

    def evaluated() -> list[dict[str, Any]]:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        return rules if rules and done else []

    rules = wait_until(evaluated, 10, 0.2, what="every alert rule evaluated once")
    assert {rule["name"] for rule in rules} == names
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert broken == {}
    # a healthy cluster: nothing fires
    firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []
