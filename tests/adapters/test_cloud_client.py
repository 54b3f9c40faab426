"""Cloud client against a real aiohttp server: pooling, bearer token, errors as HttpError."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgesched.adapters.cloud import CloudClient
from edgesched.config import CloudSettings
from edgesched.errors import HttpError, HttpTimeoutError
from tests.support.httpserver import serving


class Server:
    def __init__(self) -> None:
        self.auth: list[str | None] = []
        self.peers: set[Any] = set()
        self.mode = "ok"

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        self.peers.add(request.transport.get_extra_info("peername") if request.transport
                       else None)
        body = await request.json()
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode == "500":
            return web.Response(status=500, text="kaput")
        return web.json_response({"v": 1, "id": body["id"], "status": "ok",
                                  "result": body["input"], "placement": "local",
                                  "executed_by": "cloud", "latency_s": 0.0, "attempts": 1})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    srv = Server()
    app = web.Application()
    app.router.add_post("/v1/tasks", srv.handle)
    async with serving(app) as url:
        yield srv, url


def body(i: int) -> bytes:
    return json.dumps({"v": 1, "id": f"t{i}", "type": "echo", "input": i}).encode()


async def test_reuses_connections_and_sends_token(server: tuple[Server, str],
                                                  tmp_path: Path) -> None:
    srv, url = server
    (tmp_path / "tok").write_text("s3cret\n")
    settings = CloudSettings(url=url, token_file=tmp_path / "tok", max_connections=2)
    async with CloudClient(settings) as client:
        for i in range(5):
            reply = await client.submit(body(i))
            assert reply["result"] == i
    assert srv.auth == ["Bearer s3cret"] * 5
    assert len(srv.peers) == 1  # one kept-alive connection served every request


async def test_errors_become_http_errors(server: tuple[Server, str]) -> None:
    srv, url = server
    async with CloudClient(CloudSettings(url=url)) as client:
        srv.mode = "500"
        with pytest.raises(HttpError, match="HTTP 500, 5 bytes") as info:
            await client.submit(body(1))
        assert "kaput" not in str(info.value)  # upstream bodies are never echoed (#14)
        assert not isinstance(info.value, HttpTimeoutError)
        srv.mode = "slow"
        # a timeout is its own type: the dispatcher tells it from a failure by type
        with pytest.raises(HttpTimeoutError, match=r"did not answer within 0\.2s") as late:
            await client.submit(body(1), timeout_s=0.2)
        assert late.value.reason == "timeout"
    async with CloudClient(CloudSettings(url="http://127.0.0.1:9")) as client:
        with pytest.raises(HttpError, match=r"cloud http://127\.0\.0\.1:9/v1/tasks") as down:
            await client.submit(body(1))
        assert not isinstance(down.value, HttpTimeoutError)
        assert down.value.reason == "unreachable"
