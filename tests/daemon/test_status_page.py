"""Issue #18 parts 6 and 7 on a real cluster (two edges and a cloud node on a real mosquitto):
`GET /v1/tasks/{id}` says why a task went where it went, `edgesched status --task` prints it,
and the built-in status page, loaded in headless Chromium, shows the neighbours and the task
counts."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.nodes import REPO, http_get, wait_until

pytestmark = pytest.mark.e2e

TASKS = 9
CHROMIUM_TIMEOUT_S = 40


def chromium() -> str:
    """The Chromium binary; CI installs it (scripts/install-system-deps.sh), so a missing one
    fails there, and is only skipped on a developer's machine."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") or os.geteuid() == 0:  # `make test` installed it, or should have
        pytest.fail("chromium is not installed: run `make system-deps` (as root)")
    pytest.skip("chromium is not installed and this is not root in CI: `sudo apt-get install "
                "-y chromium` to run it (CI does)")


def post_task(node: Any, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        node.base_url + "/v1/tasks", data=json.dumps(doc).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def get_task(node: Any, task_id: str) -> tuple[int, Any]:
    status, body = http_get(f"{node.base_url}/v1/tasks/{task_id}", timeout=5)
    return status, json.loads(body) if body else None


class _Dom(html.parser.HTMLParser):
    """The dumped DOM: text by element id, and the data-node-id rows of the neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.classes: dict[str, set[str]] = {}
        self.neighbour_rows: list[str] = []
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-node-id"):
            self.neighbour_rows.append(str(a["data-node-id"]))
        if tag in ("br", "input", "meta", "link", "img"):
            return
        self._open.append(a.get("id"))
        if a.get("id"):
            self.by_id.setdefault(str(a["id"]), "")
            self.classes[str(a["id"])] = set((a.get("class") or "").split())

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("br", "input", "meta", "link", "img"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.by_id[element_id] += data


def dump_dom(url: str, profile: Path) -> str:
    out = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", f"--user-data-dir={profile}",
         "--virtual-time-budget=8000", "--dump-dom", url],
        capture_output=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    return out.stdout.decode("utf-8")


def test_task_lookup_cli_and_status_page(mosquitto: Mosquitto, node_factory: Any,
                                         tmp_path: Path) -> None:
    cloud = node_factory("cloud-1", broker=mosquitto, overrides={
        "role": "cloud", "executor": {"slots": 4}})
    node_factory("edge-2", broker=mosquitto)
    edge1 = node_factory("edge-1", broker=mosquitto, overrides={
        "cloud": {"url": cloud.base_url},
        # round robin spreads the tasks over edge-1, edge-2 and the cloud
        "policy": {"name": "round_robin"},
        "task_types": {"lecho": {"handler": "builtin:echo", "offload": "local"}},
    })
    wait_until(lambda: edge1.neighbour_status().get("edge-2") == "online", 15,
               what="edge-1 sees edge-2")

    replies = [post_task(edge1, {"id": f"page-{i}", "type": "echo", "input": {"i": i}})
               for i in range(TASKS - 1)]
    replies.append(post_task(edge1, {"id": "page-local", "type": "lecho", "input": {}}))
    assert [r["status"] for r in replies] == ["ok"] * TASKS, replies
    by = {r["id"]: r["executed_by"] for r in replies}
    assert set(by.values()) == {"edge-1", "edge-2", "cloud-1"}, by

    # -- GET /v1/tasks/{id}: why each task went where it went --------------------------------
    to_cloud = next(task for task, node in by.items() if node == "cloud-1")
    status, doc = get_task(edge1, to_cloud)
    assert status == 200, doc
    assert doc["id"] == to_cloud and doc["outcome"] == "ok" and doc["node_id"] == "edge-1"
    assert doc["placement"] == "cloud" and doc["executed_by"] == "cloud-1"
    assert doc["decision"]["chosen"] == "cloud" and doc["decision"]["policy"] == "round_robin"
    assert "cloud" in doc["decision"]["why"]
    assert {c["node_id"] for c in doc["candidates"]} == {"edge-1", "edge-2", "cloud"}
    for cand in doc["candidates"]:
        assert cand["latency_mean_s"] is not None and "reason" in cand, cand
    (attempt,) = doc["attempts"]
    assert attempt["target"] == "cloud" and attempt["result"] == "ok"
    assert attempt["duration_s"] > 0 and attempt["started_after_s"] >= 0
    # the cloud node keeps its own record of the same task (no decision there)
    status, there = get_task(cloud, to_cloud)
    assert status == 200 and there["role"] == "cloud" and there["outcome"] == "ok"
    assert there["candidates"] == [] and there["attempts"][0]["target"] == "cloud-1"

    status, local = get_task(edge1, "page-local")
    assert status == 200 and local["executed_by"] == "edge-1"
    refused = {c["node_id"]: c["reason"] for c in local["candidates"] if not c["feasible"]}
    # edge-2 has no such type; the type may not leave its node
    assert refused == {"edge-2": "unsupported_type", "cloud": "offload_policy"}, refused

    status, missing = get_task(edge1, "never-submitted")
    assert status == 404 and missing["error"] == "unknown_task"
    assert get_task(edge1, "x" * 129)[0] == 400

    # -- `edgesched status --task ID` and `edgesched status` ----------------------------------
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    env = {k: v for k, v in env.items() if not k.startswith("EDGESCHED_")}
    cli = [sys.executable, "-m", "edgesched", "status", "--url", edge1.base_url]
    shown = subprocess.run([*cli, "--task", to_cloud, "--json"], capture_output=True,
                           timeout=30, env=env, check=False)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["decision"]["chosen"] == "cloud"
    script = ("import sys, rich.console\n"
              "from edgesched.node import statusview, client\n"
              "statusview.Console = lambda: rich.console.Console(force_terminal=True, "
              "width=160)\n"
              "sys.stdout.isatty = lambda: True\n"
              "from edgesched.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    tty = subprocess.run([sys.executable, "-c", script, *cli[3:], "--task", to_cloud],
                         capture_output=True, timeout=30, env=env, check=False)
    out = tty.stdout.decode()
    assert tty.returncode == 0, tty.stderr
    for text in (to_cloud, "cloud-1", "round_robin", "candidates", "attempts", "edge-2"):
        assert text in out, (text, out)
    tty = subprocess.run([sys.executable, "-c", script, *cli[3:]], capture_output=True,
                         timeout=30, env=env, check=False)
    out = tty.stdout.decode()
    assert tty.returncode == 0, tty.stderr
    for text in ("edge-2", "recent decisions", "page-local"):
        assert text in out, (text, out)
    gone = subprocess.run([*cli, "--task", "never-submitted"], capture_output=True,
                          timeout=30, env=env, check=False)
    assert gone.returncode == 1 and b"no finished task" in gone.stderr

    # -- the status page in headless Chromium -------------------------------------------------
    status, page = http_get(edge1.base_url + "/", timeout=5)
    assert status == 200 and b"<script>" in page
    dom = _Dom()
    dom.feed(dump_dom(edge1.base_url + "/#task=" + to_cloud, tmp_path / "chromium"))
    assert dom.by_id["node-id"] == "edge-1"
    assert "edge-2" in dom.neighbour_rows, dom.neighbour_rows
    assert dom.by_id["count-total"] == str(TASKS), dom.by_id.get("task-counts")
    assert dom.by_id["count-ok"] == str(TASKS)
    assert "page-local" in dom.by_id["decisions"]
    assert "page-local" in dom.by_id["recent-tasks"]
    assert "cloud-1" in dom.by_id["lookup"] and "round_robin" in dom.by_id["lookup"]
    # the cloud node's page counts the work it did for edge-1 apart
    dom = _Dom()
    dom.feed(dump_dom(cloud.base_url + "/", tmp_path / "chromium"))
    assert dom.by_id["node-id"] == "cloud-1"
    assert dom.by_id["count-remote-edge"] == str(list(by.values()).count("cloud-1"))
    assert dom.by_id["count-total"] == "0"
    assert to_cloud in dom.by_id["recent-tasks"]  # a cloud node lists what it ran


async def _dump_served(server: Any, tmp_path: Path, path: str = "/") -> str:
    """Chromium's DOM of `path` on an in-process server (the loop keeps serving meanwhile)."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000",
        "--dump-dom", server.base_url + path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8")


async def test_the_page_asks_for_the_token_when_the_api_needs_one(tmp_path: Path) -> None:
    """A node with http.token_file: the page still loads (it is public), gets 401 from
    /v1/status and shows the token box; no data reaches it."""
    from prometheus_client import CollectorRegistry

    from edgesched.adapters.http import HttpServer
    from edgesched.adapters.metrics import Metrics

    chromium()
    server = HttpServer(host="127.0.0.1", port=0, metrics=Metrics(CollectorRegistry()),
                        status=lambda: {"node_id": "secret-node", "role": "edge"},
                        token="a-token-the-page-does-not-have")
    async with server:
        text = await _dump_served(server, tmp_path)
    dom = _Dom()
    dom.feed(text)
    assert "needs its bearer token" in dom.by_id["banner-text"], dom.by_id["banner-text"]
    assert "show" in dom.classes["token-box"] and "show" in dom.classes["banner"]
    assert "secret-node" not in text


async def test_strings_from_the_api_stay_text(tmp_path: Path) -> None:
    """Hostile ids and values (HTML, script) from /v1/status and /v1/tasks/{id} are shown as
    text: the dumped DOM has no element they would have made."""
    from prometheus_client import CollectorRegistry

    from edgesched.adapters.http import HttpServer
    from edgesched.adapters.metrics import Metrics

    chromium()
    evil = '<img src=x id="injected" onerror="document.title=1"><b id="bold">'
    record = {"id": "t1", "type": evil, "outcome": evil, "error": evil,
              "decision": {"chosen": evil, "why": evil},
              "candidates": [{"node_id": evil, "reason": evil, "placement": evil}],
              "attempts": [{"target": evil, "result": evil, "error": evil}]}
    status = {"node_id": evil, "role": evil, "version": evil,
              "mqtt": {"connected": False, "broker": evil},
              "neighbours": [{"node_id": evil, "status": evil, "role": evil,
                              "task_types": [evil]}],
              "devices": [{"device_id": evil, "values": {evil: evil}}],
              "scheduler": {"policy": evil, "links": {evil: {"rtt_s": 0.1}},
                            "estimates": {evil: {"exec": {evil: {"mean_s": 1}}}},
                            "decisions": [{"id": evil, "type": evil, "chosen": evil,
                                           "status": evil, "candidates": [
                                               {"node_id": evil, "reason": evil}]}]}}
    server = HttpServer(host="127.0.0.1", port=0, metrics=Metrics(CollectorRegistry()),
                        status=lambda: dict(status), task_lookup={"t1": record}.get)
    async with server:
        text = await _dump_served(server, tmp_path, "/#task=t1")
    dom = _Dom()
    dom.feed(text)
    assert "injected" not in dom.by_id and "bold" not in dom.by_id
    assert evil in dom.by_id["node-id"] and evil in dom.by_id["neighbours"]
    assert evil in dom.by_id["decisions"] and evil in dom.by_id["lookup"]


async def test_a_token_typed_into_the_page_unlocks_it(tmp_path: Path) -> None:
    """The token flow driven in a real Chromium (DevTools protocol): typed into the token box,
    kept in sessionStorage, sent as a header (never in the address), and the data appears."""
    import asyncio

    import aiohttp
    from prometheus_client import CollectorRegistry

    from edgesched.adapters.http import HttpServer
    from edgesched.adapters.metrics import Metrics
    from tests.support.broker import free_listen_port

    binary = chromium()
    token = "tok-" + "x" * 20
    server = HttpServer(host="127.0.0.1", port=0, metrics=Metrics(CollectorRegistry()),
                        status=lambda: {"node_id": "locked-node", "role": "edge",
                                        "neighbours": [{"node_id": "gw-9", "status": "online"}]},
                        token=token)
    port = free_listen_port()
    async with server:
        proc = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}", f"--remote-debugging-port={port}",
            server.base_url + "/", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(CHROMIUM_TIMEOUT_S), aiohttp.ClientSession() as http:
                ws_url = None
                while ws_url is None:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                            pages = [p for p in await resp.json() if p.get("type") == "page"]
                            ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
                async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                    calls = iter(range(1, 1000))

                    async def evaluate(expression: str) -> Any:
                        call = next(calls)
                        await ws.send_json({"id": call, "method": "Runtime.evaluate",
                                            "params": {"expression": expression,
                                                       "returnByValue": True}})
                        while True:
                            msg = await ws.receive_json()
                            if msg.get("id") == call:
                                return msg["result"]["result"].get("value")

                    async def wait_for(expression: str) -> Any:
                        while True:  # bounded by the timeout around the whole exchange
                            value = await evaluate(expression)
                            if value:
                                return value
                            await asyncio.sleep(0.1)

                    await wait_for("document.getElementById('token-box').classList"
                                   ".contains('show')")
                    assert await evaluate("document.getElementById('node-id').textContent"
                                          ) != "locked-node"
                    await evaluate(f"document.getElementById('token').value = '{token}';"
                                   "document.getElementById('token-box').requestSubmit(); 1")
                    shown = await wait_for(
                        "document.getElementById('node-id').textContent === 'locked-node' && "
                        "document.getElementById('neighbours').textContent")
                    assert "gw-9" in shown
                    assert await evaluate("sessionStorage.getItem('edgesched.token')") == token
                    assert await evaluate("localStorage.length") == 0
                    assert token not in await evaluate("location.href")
                    assert await evaluate("document.getElementById('token').value") == ""
                    assert not await evaluate("document.getElementById('banner').classList"
                                              ".contains('show')")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
