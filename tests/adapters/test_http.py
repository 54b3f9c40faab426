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
