"""`NodeProcess`: one real `edgesched run` subprocess with its own config, for e2e tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.broker import Mosquitto, free_listen_port

REPO = Path(__file__).resolve().parents[2]


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def http_get(url: str, timeout: float = 2.0,
             headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET -> (status, body); (0, b"") when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll `predicate()` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:  # evaluated at least once, even when the deadline has already passed
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"not true after {timeout}s: {what or predicate} (last: {last!r})")


class NodeProcess:
    """One `python -m edgesched run --config FILE` process.

    The config is the test defaults (given broker, free HTTP port, fast telemetry) deep-merged
    with `overrides`. Logs go to `<workdir>/<node_id>.log`. `start()` waits (bounded) until
    `/healthz` answers 200.
    """

    def __init__(
        self,
        workdir: Path,
        node_id: str,
        *,
        broker: Mosquitto | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.node_id = node_id
        self.http_port = free_listen_port()
        config: dict[str, Any] = {
            "node_id": node_id,
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "telemetry": {"interval_s": 0.3},
            "log": {"level": "INFO"},
        }
        if broker is not None:
            config["mqtt"] = {"host": broker.host, "port": broker.port, "keepalive_s": 2,
                              "reconnect_initial_s": 0.1, "reconnect_max_s": 1.0}
        self.config = deep_merge(config, overrides or {})
        self.http_port = int(self.config["http"]["port"])
        self.config_path = workdir / f"{node_id}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / f"{node_id}.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """`Authorization: Bearer` with the node's http.token_file, when it has one."""
        token_file = self.config.get("http", {}).get("token_file")
        if not token_file:
            return {}
        path = Path(token_file)
        token = (path if path.is_absolute() else self.workdir / path).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> NodeProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("EDGESCHED_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update(self.env)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgesched", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir),
            )
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n"
                                   + self.log_text()[-3000:])
            return http_get(self.base_url + "/healthz", timeout=1.0)[0] == 200

        wait_until(healthy, timeout, what=f"{self.node_id} /healthz")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get_json(self, path: str) -> Any:
        status, body = http_get(self.base_url + path, headers=self.auth_headers)
        if status != 200:
            raise RuntimeError(f"GET {path} on {self.node_id}: HTTP {status}")
        return json.loads(body)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get_json("/v1/status")
        return doc

    def neighbour_status(self) -> dict[str, str]:
        """node_id -> online/suspect/offline, as this node sees them."""
        return {n["node_id"]: n["status"] for n in self.status()["neighbours"]}

    def metrics_text(self) -> str:
        status, body = http_get(self.base_url + "/metrics", headers=self.auth_headers)
        if status != 200:
            raise RuntimeError(f"GET /metrics on {self.node_id}: HTTP {status}")
        return body.decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of the samples of /metrics named `name` whose labels include `labels`,
        summed (e.g. over `type` when only placement and status are given); None when there
        is no such sample."""
        from prometheus_client.parser import text_string_to_metric_families

        found = [float(sample.value)
                 for family in text_string_to_metric_families(self.metrics_text())
                 for sample in family.samples
                 if sample.name == name and all(sample.labels.get(k) == v
                                                for k, v in labels.items())]
        return sum(found) if found else None

    def terminate(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or `sig`), wait up to `timeout`, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def restart(self, *, wait: bool = True) -> NodeProcess:
        self.terminate()
        return self.start(wait=wait)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    """`node_factory(node_id, broker=..., overrides=..., env=..., start=True)` -> NodeProcess;
    every node made is stopped at teardown (SIGTERM, then SIGKILL)."""
    made: list[NodeProcess] = []

    def factory(node_id: str, *, broker: Mosquitto | None = None,
                overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None, start: bool = True) -> NodeProcess:
        node = NodeProcess(tmp_path, node_id, broker=broker, overrides=overrides, env=env)
        made.append(node)
        return node.start() if start else node

    try:
        yield factory
    finally:
        for node in made:
            try:
                node.terminate(timeout=5)
            except Exception:  # teardown must reach every node
                node.kill()
