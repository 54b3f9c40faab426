"""The cloud tier's cancel (`DELETE /v1/tasks/{id}?sent_at=MS`) on a real cloud node process:
an edge node that gave up on a cloud attempt lets the cloud drop it before it starts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.support.nodes import NodeProcess, wait_until

pytestmark = pytest.mark.e2e


def now_ms() -> int:
    return int(time.time() * 1000)


async def post(session: aiohttp.ClientSession, node: NodeProcess,
               doc: dict[str, Any]) -> dict[str, Any]:
    async with session.post(f"{node.base_url}/v1/tasks", json=doc) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def cancel(session: aiohttp.ClientSession, node: NodeProcess, task_id: str,
                 sent_at: Any) -> tuple[int, dict[str, Any]]:
    async with session.delete(f"{node.base_url}/v1/tasks/{task_id}",
                              params={"sent_at": str(sent_at)}) as resp:
        return resp.status, await resp.json()


async def test_cloud_drops_a_cancelled_task_that_has_not_started(node_factory: Any) -> None:
    cloud = node_factory("cloud-1", overrides={"role": "cloud", "executor": {"slots": 1}})
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        hold = asyncio.create_task(post(session, cloud, {"type": "sleep",
                                                         "input": {"seconds": 2}}))
        await asyncio.to_thread(wait_until, lambda: cloud.status()["tasks"]["running"] == 1,
                                5, 0.05, "the cloud's slot held")
        sent_at = now_ms()
        victim = asyncio.create_task(post(session, cloud, {
            "id": "victim", "type": "sleep", "input": {"seconds": 0.1}, "sent_at": sent_at}))
        await asyncio.to_thread(wait_until, lambda: cloud.status()["tasks"]["queued"] == 1,
                                5, 0.05, "the victim queued")
        assert await cancel(session, cloud, "victim", sent_at) == (
            200, {"id": "victim", "result": "dropped"})
        reply = await asyncio.wait_for(victim, 5)
        assert reply["status"] == "expired" and "cancelled" in reply["error"], reply
        assert (await asyncio.wait_for(hold, 10))["status"] == "ok"

        # a cancel that arrives before its task: the task is dropped on arrival
        early = now_ms()
        assert await cancel(session, cloud, "early", early) == (
            200, {"id": "early", "result": "unknown"})
        reply = await post(session, cloud, {"id": "early", "type": "echo", "input": 1,
                                            "sent_at": early})
        assert reply["status"] == "expired" and "cancelled" in reply["error"], reply
        # another attempt of the same id (another sent_at) is a task of its own
        reply = await post(session, cloud, {"id": "early", "type": "echo", "input": 2,
                                            "sent_at": now_ms() + 1})
        assert reply["status"] == "ok", reply

        status, body = await cancel(session, cloud, "x", "12e3")
        assert status == 400 and "sent_at" in body["detail"]
    assert cloud.metric("edgesched_cancels_total", direction="received",
                        result="dropped") == 2
