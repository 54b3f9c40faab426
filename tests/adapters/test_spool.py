"""The durable spool (adapters/spool.py) on a real sqlite file: record, complete, resume,
bounds, TTL, and a corrupt or unwritable file as a clear error."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions
from edgesched.adapters.spool import FILENAME, Spool
from edgesched.errors import ConfigError
from tests.support.broker import Mosquitto


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def open_spool(state: Path, *, max_bytes: int = 1 << 20, ttl: float = 60.0,
               metrics: Metrics | None = None, clock: Clock | None = None) -> Spool:
    return Spool.open(state, max_bytes=max_bytes, reply_ttl_s=ttl, metrics=metrics,
                      clock=clock or Clock())


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_record_complete_and_resume_across_a_reopen(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    assert spool.record_task("k1", "echo", b'{"type":"echo"}', response_topic="c/1",
                             correlation_data=b"x")
    assert spool.record_task("k2", "sleep", b'{"type":"sleep"}', response_topic=None,
                             correlation_data=None)
    assert spool.complete("k2", topic="c/2", correlation_data=None, payload=b'{"id":"2"}')
    spool.close()

    again = open_spool(tmp_path)  # what a restart sees
    tasks = again.pending_tasks()
    assert [(t.key, t.type, t.payload, t.response_topic, t.correlation_data) for t in tasks] == [
        ("k1", "echo", b'{"type":"echo"}', "c/1", b"x")]
    replies = again.pending_replies()
    assert [(r.key, r.topic, r.payload) for r in replies] == [("k2", "c/2", b'{"id":"2"}')]
    again.forget_reply("k2")
    again.complete("k1", topic="c/1", correlation_data=b"x", payload=b"{}")
    again.forget_reply("k1")
    assert again.task_count == 0 and again.reply_count == 0 and again.bytes == 0
    again.close()
    assert open_spool(tmp_path).pending_tasks() == []


def test_gauges_follow_the_rows(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    spool = open_spool(tmp_path, metrics=metrics)
    spool.record_task("k", "echo", b"{}", response_topic="t", correlation_data=None)
    assert sample(metrics, "edgesched_spool_tasks") == 1
    spool.complete("k", topic="t", correlation_data=None, payload=b"{}")
    assert sample(metrics, "edgesched_spool_tasks") == 0
    assert sample(metrics, "edgesched_spool_replies") == 1


def test_over_max_bytes_is_shed_and_counted(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    spool = open_spool(tmp_path, max_bytes=64 << 10, metrics=metrics)
    big = b"x" * (40 << 10)
    assert spool.record_task("a", "echo", big, response_topic="t", correlation_data=None)
    assert not spool.record_task("b", "echo", big, response_topic="t", correlation_data=None)
    assert spool.task_count == 1
    assert sample(metrics, "edgesched_spool_shed_total", reason="full") == 1
    # a reply too big for what is left is not kept, but its task row is gone all the same
    assert not spool.complete("a", topic="t", correlation_data=None, payload=big * 2)
    assert spool.task_count == 0 and spool.reply_count == 0 and spool.bytes == 0
    assert sample(metrics, "edgesched_spool_shed_total", reason="full") == 2


def test_replies_past_the_ttl_are_given_up_and_counted(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    clock = Clock()
    spool = open_spool(tmp_path, ttl=60.0, metrics=metrics, clock=clock)
    spool.complete("old", topic="t", correlation_data=None, payload=b"{}")
    clock.now += 30
    spool.complete("new", topic="t", correlation_data=None, payload=b"{}")
    clock.now += 31
    assert [r.key for r in spool.pending_replies()] == ["new"]
    assert sample(metrics, "edgesched_spool_shed_total", reason="ttl") == 1
    assert spool.reply_count == 1


def test_a_write_error_is_counted_and_the_caller_told(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    spool = open_spool(tmp_path, metrics=metrics)
    spool._conn.execute("DROP TABLE tasks")  # any sqlite error at runtime, e.g. disk full
    assert not spool.record_task("k", "echo", b"{}", response_topic="t",
                                 correlation_data=None)
    assert sample(metrics, "edgesched_spool_shed_total", reason="write_error") == 1
    assert spool.task_count == 0


def test_corrupt_file_is_a_clear_config_error(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"this is not a sqlite database at all" * 200)
    with pytest.raises(ConfigError) as err:
        open_spool(tmp_path)
    assert err.value.problems[0][0] == "state_dir"
    assert "move it away" in str(err.value) and FILENAME in str(err.value)


def test_damaged_pages_are_a_clear_config_error(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for i in range(200):
        spool.record_task(f"k{i}", "echo", os.urandom(512), response_topic="t",
                          correlation_data=None)
    spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    spool.close()
    path = tmp_path / FILENAME
    data = bytearray(path.read_bytes())
    data[4096 + 100: 4096 * 3] = b"\xff" * (4096 * 2 - 100)  # trash pages 2-3
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="state_dir"):
        open_spool(tmp_path)


def test_unusable_state_dir_is_a_clear_config_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("a file, not a directory")  # fails for root too (unlike a chmod)
    with pytest.raises(ConfigError, match="state_dir"):
        open_spool(state)


def test_wal_and_normal_sync(tmp_path: Path) -> None:
    open_spool(tmp_path).close()
    conn = sqlite3.connect(tmp_path / FILENAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_acknowledged_replies_are_deleted_together_in_the_loop(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for i in range(700):
        spool.complete(f"k{i}", topic="t", correlation_data=None, payload=b"{}")
    for i in range(700):
        spool.forget_reply(f"k{i}")
    assert spool.reply_count == 0  # counted at once ...
    rows = spool._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    assert rows == 700  # ... deleted at the end of this loop iteration, in one go
    await asyncio.sleep(0)
    assert spool._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 0
    spool.close()
    assert open_spool(tmp_path).pending_replies() == []


async def test_manual_ack_keeps_an_unacknowledged_submission_at_the_broker(
        mosquitto: Mosquitto) -> None:
    """The submit subscription's `manual_ack`: a message whose handler did not call
    `msg.ack()` (not yet spooled when the node died) is redelivered to the persistent
    session; an acknowledged one is not. Real mosquitto, MQTT 5."""
    options = MqttOptions(host=mosquitto.host, port=mosquitto.port, client_id="ack-test",
                          session_expiry_s=60, reconnect_initial_s=0.1)
    got: list[bytes] = []
    arrived = asyncio.Event()

    async def handler(msg: InboundMessage) -> None:
        got.append(msg.payload)
        if msg.payload == b"ack" and msg.ack is not None:
            msg.ack()
        arrived.set()

    async def session(within_s: float = 10) -> None:
        client = MqttClient(options, Metrics(CollectorRegistry()))
        await client.subscribe("sub/#", handler, qos=1, manual_ack=True)
        async with client:
            async with asyncio.timeout(within_s):
                await client.wait_connected()
                while len(got) < 2:
                    arrived.clear()
                    await arrived.wait()

    publisher = MqttClient(MqttOptions(host=mosquitto.host, port=mosquitto.port,
                                       client_id="ack-pub"), Metrics(CollectorRegistry()))
    async with publisher:
        async with asyncio.timeout(10):
            await publisher.wait_connected()
        first = asyncio.create_task(session())
        await asyncio.sleep(0.5)  # subscribed
        await publisher.publish("sub/a", b"ack", qos=1)
        await publisher.publish("sub/b", b"noack", qos=1)
        await first
        assert sorted(got) == [b"ack", b"noack"]
        got.clear()
        # the same session again: only the unacknowledged message comes back
        again = asyncio.create_task(session(within_s=3))
        with pytest.raises(TimeoutError):
            await again  # never a second message: `ack` is not redelivered
    assert got == [b"noack"]
