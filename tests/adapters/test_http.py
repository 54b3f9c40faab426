"""The HTTP adapter: built-in endpoints and the extension points other components use."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from edgesched.adapters.http import HttpServer
from edgesched.adapters.metrics import Metrics


async def get(url: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        ctype = resp.headers.get("Content-Type", "")
        body = await (resp.json() if "json" in ctype else resp.text())
        return resp.status, body, ctype


async def test_endpoints_and_extension_points() -> None:
    metrics = Metrics(CollectorRegistry())
    problem: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    async def pipeline_status() -> dict[str, Any]:
        return {"running": 3, "queued": 1}

    server = HttpServer(
        host="127.0.0.1", port=0, metrics=metrics,
        status=lambda: {"node_id": "n", "tasks": {"running": 0}, "x": float("nan")},
        routes=[web.get("/v1/hello", hello)],
        status_providers={"tasks": pipeline_status, "extra": lambda: {"k": 1}},
        health_checks={"thing": lambda: problem[0] if problem else None})
    async with server:
        assert server.bound_port and server.bound_port > 0
        base = server.base_url
        assert await get(base + "/healthz") == (200, {"status": "ok"},
                                                 "application/json; charset=utf-8")
        problem.append("the thing is broken")
        status, body, _ = await get(base + "/healthz")
        assert (status, body) == (503, {"status": "unhealthy",
                                        "reasons": ["the thing is broken"]})
        status, body, _ = await get(base + "/v1/status")
        assert status == 200
        assert body == {"node_id": "n", "tasks": {"running": 3, "queued": 1}, "x": None,
                        "extra": {"k": 1}}
        assert (await get(base + "/v1/hello"))[1] == {"hello": True}
        status, text, ctype = await get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert "edgesched_mqtt_connected 0.0" in text


async def test_port_in_use_is_a_clear_error() -> None:
    import pytest

    from edgesched.errors import HttpError

    metrics = Metrics(CollectorRegistry())
    first = HttpServer(host="127.0.0.1", port=0, metrics=metrics, status=dict)
    async with first:
        second = HttpServer(host="127.0.0.1", port=first.bound_port or 0, metrics=metrics,
                            status=dict)
        with pytest.raises(HttpError, match=r"http\.port"):
            async with second:
                pass


# ---- GET /v1/tasks/{id} and the status page -------------------------------------------------

async def _request(method: str, url: str, token: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, \
            session.request(method, url, headers=headers) as resp:
        ctype = resp.headers.get("Content-Type", "")
        body = await (resp.json() if "json" in ctype else resp.text())
        return resp.status, body, resp.headers


def _task_server(token: str | None = None) -> HttpServer:
    from edgesched.node.tasklog import TaskLog, valid_task_id

    log = TaskLog(max_bytes=1 << 16)
    log.record({"id": "t-1", "type": "echo", "outcome": "ok", "placement": "cloud",
                "candidates": [{"node_id": "edge-1", "feasible": False, "reason": "deadline"}]})

    async def submit(request: web.Request) -> web.Response:
        return web.json_response({"submitted": True})

    async def cancel(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "result": "unknown"})

    return HttpServer(host="127.0.0.1", port=0, metrics=Metrics(CollectorRegistry()),
                      status=dict, token=token,
                      routes=[web.post("/v1/tasks", submit),
                              web.delete("/v1/tasks/{id}", cancel)],
                      task_lookup=log.get, valid_task_id=valid_task_id)


async def test_task_lookup_found_unknown_and_bad_id() -> None:
    async with _task_server() as server:
        base = server.base_url
        status, body, _ = await _request("GET", base + "/v1/tasks/t-1")
        assert status == 200
        assert body["id"] == "t-1" and body["placement"] == "cloud"
        assert body["candidates"] == [{"node_id": "edge-1", "feasible": False,
                                       "reason": "deadline"}]
        status, body, _ = await _request("GET", base + "/v1/tasks/t-2")
        assert status == 404
        assert body["error"] == "unknown_task" and body["id"] == "t-2"
        assert "http.recent_tasks_bytes" in body["detail"]
        # the intake's id rule: printable, 1..128 characters
        for bad in ("x" * 129, "a%07b"):
            status, body, _ = await _request("GET", base + "/v1/tasks/" + bad)
            assert (status, body["error"]) == (400, "bad_id"), bad
        status, body, _ = await _request("GET", base + "/v1/tasks/" + "x" * 128)
        assert status == 404
        # the other methods of the path family still reach their handlers
        assert (await _request("POST", base + "/v1/tasks"))[:2] == (200, {"submitted": True})
        assert (await _request("DELETE", base + "/v1/tasks/t-1"))[:2] == (
            200, {"id": "t-1", "result": "unknown"})
        text = (await _request("GET", base + "/metrics"))[1]
        for result, count in (("found", 1), ("unknown", 2), ("bad_id", 2)):
            assert f'edgesched_task_lookups_total{{result="{result}"}} {count}.0' in text, result


async def test_task_lookup_needs_the_token_and_the_page_does_not() -> None:
    metrics_text = ""
    async with _task_server(token="s3cret-token") as server:
        base = server.base_url
        status, body, headers = await _request("GET", base + "/v1/tasks/t-1")
        assert status == 401 and body["error"] == "unauthorized"
        assert headers["WWW-Authenticate"] == "Bearer"
        assert (await _request("GET", base + "/v1/tasks/t-1", "wrong"))[0] == 401
        status, body, _ = await _request("GET", base + "/v1/tasks/t-1", "s3cret-token")
        assert status == 200 and body["outcome"] == "ok"
        # the page is public (it holds no data) and locked down by its headers
        status, page, headers = await _request("GET", base + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "s3cret-token" not in page
        metrics_text = (await _request("GET", base + "/metrics"))[1]
    refused = [line for line in metrics_text.splitlines()
               if line.startswith("edgesched_http_unauthorized_total{")
               and 'path="/v1/tasks"' in line]
    assert refused and refused[0].endswith(" 2.0"), refused


def test_status_page_is_self_contained() -> None:
    """One static file, no external resource, no HTML built from strings of data."""
    import re

    from edgesched.adapters.http import status_page

    page = status_page().decode("utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "external resource"
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page
    assert "document.write" not in page and "eval(" not in page
    assert "sessionStorage" in page and "localStorage" not in page
