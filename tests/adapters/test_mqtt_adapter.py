"""The MQTT adapter against a real mosquitto: pub/sub, v5 properties, 3.1.1, bounds, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import (
    InboundMessage,
    MqttClient,
    MqttOptions,
    OutboundMessage,
    backoff_delay,
    outgoing_window,
    topic_matches,
)
from edgesched.errors import MqttError
from tests.support.broker import Mosquitto


def client(broker: Mosquitto, name: str, **kw: object) -> tuple[MqttClient, Metrics]:
    metrics = Metrics(CollectorRegistry())
    opts = MqttOptions(host=broker.host, port=broker.port, client_id=name, keepalive_s=2,
                       reconnect_initial_s=0.05, reconnect_max_s=0.3, **kw)  # type: ignore[arg-type]
    return MqttClient(opts, metrics), metrics


async def collect(mqtt: MqttClient, flt: str, **kw: object) -> asyncio.Queue[InboundMessage]:
    box: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def handler(msg: InboundMessage) -> None:
        await box.put(msg)

    await mqtt.subscribe(flt, handler, **kw)  # type: ignore[arg-type]
    return box


@contextlib.asynccontextmanager
async def sender_and_box(broker: Mosquitto, name: str, flt: str, **kw: object
                         ) -> AsyncIterator[tuple[MqttClient, asyncio.Queue[InboundMessage]]]:
    """A connected client `name` to publish with, and the queue of what a second connected
    client receives on `flt` (QoS 1); `kw` are both clients' options."""
    sender, _ = client(broker, name, **kw)
    receiver, _ = client(broker, f"{name}-reader", **kw)
    async with sender, receiver:
        await asyncio.wait_for(sender.wait_connected(), 5)
        await asyncio.wait_for(receiver.wait_connected(), 5)
        yield sender, await collect(receiver, flt, qos=1)


async def test_v5_roundtrip_with_properties(mosquitto: Mosquitto) -> None:
    async with sender_and_box(mosquitto, "a", "t/+/x") as (a, box):
        await a.publish("t/1/x", b"hello", qos=1, response_topic="r/1",
                        correlation_data=b"\x01\x02", user_properties=[("k", "v")])
        msg = await asyncio.wait_for(box.get(), 5)
    assert (msg.topic, msg.payload, msg.qos) == ("t/1/x", b"hello", 1)
    assert msg.response_topic == "r/1" and msg.correlation_data == b"\x01\x02"
    assert msg.user_properties == (("k", "v"),)
    assert msg.received_at > 0


async def test_mqtt_311_roundtrip(mosquitto: Mosquitto) -> None:
    a, _ = client(mosquitto, "a311", protocol="3.1.1")
    async with a:
        await asyncio.wait_for(a.wait_connected(), 5)
        box = await collect(a, "t/#")
        await a.publish("t/y", b"1", qos=1, response_topic="ignored-on-311")
        msg = await asyncio.wait_for(box.get(), 5)
    assert msg.payload == b"1" and msg.response_topic is None


async def test_slow_handler_drops_are_counted_and_do_not_stall_others(
    mosquitto: Mosquitto,
) -> None:
    a, metrics = client(mosquitto, "slow", max_payload_bytes=256)
    gate = asyncio.Event()

    async def slow(msg: InboundMessage) -> None:
        await gate.wait()

    async with a:
        await asyncio.wait_for(a.wait_connected(), 5)
        await a.subscribe("slow/#", slow, queue_size=16)
        fast = await collect(a, "fast/#")
        for i in range(100):
            await a.publish("slow/x", str(i).encode())
        await a.publish("fast/x", b"still here")
        await a.publish("fast/x", b"y" * 1000)  # over max_payload_bytes: dropped unread
        await a.publish("fast/x", b"after")
        assert (await asyncio.wait_for(fast.get(), 5)).payload == b"still here"
        assert (await asyncio.wait_for(fast.get(), 5)).payload == b"after"
        gate.set()
    dropped = metrics.registry.get_sample_value(
        "edgesched_mqtt_messages_dropped_total", {"reason": "incoming_queue_full"})
    assert dropped is not None and 100 - 17 <= dropped <= 100 - 16
    assert metrics.registry.get_sample_value(
        "edgesched_mqtt_messages_dropped_total", {"reason": "oversize"}) == 1


async def test_handler_exception_does_not_stop_the_subscription(mosquitto: Mosquitto) -> None:
    a, _ = client(mosquitto, "boom")
    seen: list[bytes] = []

    async def handler(msg: InboundMessage) -> None:
        if msg.payload == b"bad":
            raise ValueError("boom")
        seen.append(msg.payload)

    async with a:
        await asyncio.wait_for(a.wait_connected(), 5)
        await a.subscribe("e", handler)
        for payload in (b"bad", b"good"):
            await a.publish("e", payload, qos=1)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
    assert seen == [b"good"]


async def test_publish_while_disconnected_raises(mosquitto: Mosquitto) -> None:
    a, _ = client(mosquitto, "x")
    with pytest.raises(MqttError, match="not connected"):
        await a.publish("t", b"1")


async def test_reconnect_resubscribes_runs_hooks_and_counts(mosquitto: Mosquitto) -> None:
    a, metrics = client(mosquitto, "re")
    connects = 0

    async def hook() -> None:
        nonlocal connects
        connects += 1

    a.on_connect(hook)
    async with a:
        await asyncio.wait_for(a.wait_connected(), 5)
        box = await collect(a, "after/#")
        await asyncio.to_thread(mosquitto.stop)
        for _ in range(100):
            if not a.connected:
                break
            await asyncio.sleep(0.05)
        assert not a.connected and a.disconnected_for() >= 0
        assert metrics.registry.get_sample_value("edgesched_mqtt_connected") == 0
        await asyncio.to_thread(mosquitto.start)
        await asyncio.wait_for(a.wait_connected(), 10)
        await a.publish("after/x", b"1", qos=1)
        assert (await asyncio.wait_for(box.get(), 5)).payload == b"1"
    assert connects == 2
    assert metrics.registry.get_sample_value("edgesched_mqtt_reconnects_total") == 1


async def _until_disconnected(mqtt: MqttClient) -> None:
    for _ in range(200):
        if not mqtt.connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the client never noticed the broker was gone")


async def test_publish_reliably_waits_for_the_reconnect_and_retries(
        mosquitto: Mosquitto) -> None:
    """A reply published while the broker is away goes out once it is back (QoS 1, with the
    correlation data), instead of being lost on the first failure."""
    sender, _ = client(mosquitto, "replier")
    async with sender:
        await asyncio.wait_for(sender.wait_connected(), 5)
        # its own subscription is renewed before it counts as connected again: no race
        box = await collect(sender, "replies/#", qos=1)
        await asyncio.to_thread(mosquitto.stop)
        await _until_disconnected(sender)
        reply = asyncio.create_task(sender.publish_reliably(
            "replies/1", b"late", correlation_data=b"c1", reconnect_wait_s=15))
        await asyncio.sleep(0.3)
        assert not reply.done()  # waiting for the broker, not failed
        await asyncio.to_thread(mosquitto.start)
        await asyncio.wait_for(reply, 15)
        msg = await asyncio.wait_for(box.get(), 10)
    assert (msg.topic, msg.payload, msg.qos, msg.correlation_data) == (
        "replies/1", b"late", 1, b"c1")


async def test_publish_reliably_gives_up_after_its_bounded_wait(mosquitto: Mosquitto) -> None:
    sender, _ = client(mosquitto, "impatient")
    with pytest.raises(MqttError, match=r"not connected to the broker for 0\.2s"):
        await sender.publish_reliably("t", b"x", reconnect_wait_s=0.2)  # never connected
    async with sender:
        await asyncio.wait_for(sender.wait_connected(), 5)
        await sender.publish_reliably("t", b"x")  # connected: a plain QoS 1 publish
        await asyncio.to_thread(mosquitto.stop)
        await _until_disconnected(sender)
        with pytest.raises(MqttError, match="cannot publish to t2"):
            await sender.publish_reliably("t2", b"y", reconnect_wait_s=0.3)


async def test_will_on_kill_and_goodbye_on_graceful_stop(mosquitto: Mosquitto) -> None:
    watcher, _ = client(mosquitto, "watcher")
    a, _ = client(mosquitto, "mortal")
    a.set_will(OutboundMessage(topic="state/a", payload=b"will"),
               goodbye=lambda: OutboundMessage(topic="state/a", payload=b"goodbye"))
    async with watcher:
        await asyncio.wait_for(watcher.wait_connected(), 5)
        box = await collect(watcher, "state/a", qos=1)
        async with a:
            await asyncio.wait_for(a.wait_connected(), 5)
        msg = await asyncio.wait_for(box.get(), 5)
    assert msg.payload == b"goodbye"


def shared_dir(prefix: str) -> Path:
    """A directory mosquitto can read: started as root, it reads password and ACL files after
    dropping to its own user, so they cannot live in pytest's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def password_file(user: str, password: str) -> tuple[Path, Path]:
    pwdir = shared_dir("es-pw-")
    pwfile = pwdir / "passwd"
    pwfile.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True,
                   timeout=10)
    return pwdir, pwfile


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
async def test_username_password(tmp_path: Path) -> None:
    pwdir, pwfile = password_file("node", "s3cret")
    broker = Mosquitto(workdir=tmp_path, extra_conf=f"allow_anonymous false\n"
                                                    f"password_file {pwfile}\n")
    try:
        broker.start()
        good, _ = client(broker, "good", username="node", password="s3cret")
        bad, _ = client(broker, "bad", username="node", password="wrong")
        async with good, bad:
            await asyncio.wait_for(good.wait_connected(), 5)
            await asyncio.sleep(0.5)
            assert good.connected and not bad.connected
    finally:
        broker.stop()
        shutil.rmtree(pwdir, ignore_errors=True)


def test_topic_matching() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/+", "a/b/c")
    assert topic_matches("$share/g/a/+", "a/b")
    assert not topic_matches("#", "$SYS/x")


def test_backoff_is_capped_jittered_and_growing() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(i, 0.5, 30.0, rng) for i in range(12)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(15.0 <= d <= 30.0 for d in delays[7:])
    assert len(set(delays)) == len(delays)  # jitter



async def test_outgoing_queue_is_bounded_and_counted(mosquitto: Mosquitto) -> None:
    import os
    import signal

    a, metrics = client(mosquitto, "out", incoming_queue=16)
    window = outgoing_window(a.options)
    async with a:
        await asyncio.wait_for(a.wait_connected(), 5)
        assert mosquitto.proc is not None
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)  # no PUBACK comes back: QoS 1 piles up
        try:
            results = await asyncio.gather(
                *(a.publish("t", b"x", qos=1, timeout_s=1.0) for _ in range(window + 24)),
                return_exceptions=True,
            )
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
    assert all(isinstance(r, MqttError) for r in results)  # edgesched's error, never aiomqtt's
    dropped = metrics.registry.get_sample_value(
        "edgesched_mqtt_messages_dropped_total", {"reason": "outgoing_queue_full"})
    assert dropped == 24  # paho holds at most the window (queued + in flight) unacknowledged


async def test_packets_read_in_chunks_all_arrive_whole_and_in_order(
        mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The socket is read in chunks (_RecvBuffer): a backlog of small messages that arrived
    together is delivered in full even where a read burst ends inside a chunk (the socket
    will not say those bytes are there), and a message larger than a chunk arrives whole."""
    import edgesched.adapters.mqtt as adapter

    monkeypatch.setattr(adapter, "READ_BURST_PACKETS", 3)  # bursts end inside every chunk
    big = bytes(range(256)) * 1200  # 300 kB: several chunks
    (tmp_path / "big").write_bytes(big)
    count = 2000
    lines = "".join(f"m{i:05d}\n" for i in range(count))
    metrics = Metrics(CollectorRegistry())
    # no keepalive traffic for the length of the test: nothing else makes the socket readable
    sub = MqttClient(MqttOptions(host=mosquitto.host, port=mosquitto.port, client_id="chunks",
                                 keepalive_s=60, incoming_queue=4 * count), metrics)
    pub = [shutil.which("mosquitto_pub") or "mosquitto_pub", "-h", mosquitto.host,
           "-p", str(mosquitto.port), "-q", "1"]
    async with sub:
        await asyncio.wait_for(sub.wait_connected(), 5)
        box = await collect(sub, "c/#", qos=1)
        # this event loop is blocked while the messages arrive: they pile up in the socket
        subprocess.run([*pub, "-t", "c/small", "-l"],  # noqa: ASYNC221 - blocking on purpose
                       input=lines.encode(), check=True, timeout=30)
        small = [await asyncio.wait_for(box.get(), 5) for _ in range(count)]
        subprocess.run([*pub, "-t", "c/big", "-f", str(tmp_path / "big")],  # noqa: ASYNC221
                       check=True, timeout=30)
        whole = await asyncio.wait_for(box.get(), 5)
    assert [m.payload.decode() for m in small] == [f"m{i:05d}" for i in range(count)]
    assert whole.topic == "c/big" and whole.payload == big
    dropped = metrics.registry.get_sample_value(
        "edgesched_mqtt_messages_dropped_total", {"reason": "incoming_queue_full"})
    assert not dropped


async def test_queued_packets_are_written_together_whole_and_in_order(
        mosquitto: Mosquitto) -> None:
    """Packets queued between two writes go out in one send() (_coalesce_writes), QoS 0
    publishes among them on their own: every message arrives once, whole, in order."""
    async with sender_and_box(mosquitto, "writer", "w/#", incoming_queue=2000) as (a, box):
        paho_client = a._paho
        sends = 0
        send = paho_client._sock_send

        def counting_send(buf: bytes) -> int:
            nonlocal sends
            sends += 1
            return int(send(buf))

        paho_client._sock_send = counting_send
        count = 600
        await asyncio.gather(*(
            a.publish("w/x", f"m{i:04d}".encode() * (1 + i % 50), qos=0 if i % 97 == 0 else 1)
            for i in range(count)))
        got = [await asyncio.wait_for(box.get(), 5) for _ in range(count)]
    assert [m.payload for m in got] == [f"m{i:04d}".encode() * (1 + i % 50)
                                        for i in range(count)]
    assert sends < count / 4  # written together, not one send() a packet


async def test_publishes_queued_behind_a_narrow_window_still_go_out(
        mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """paho's scan for queued publishes runs only when some are queued
    (_scan_only_when_queued): behind a window of 5 in flight (60 kept), 60 publishes are
    all sent and acknowledged, in order."""
    import edgesched.adapters.mqtt as adapter

    monkeypatch.setattr(adapter, "outgoing_window", lambda opts: 60)
    async with sender_and_box(mosquitto, "narrow", "n/#") as (a, box):
        a._paho._max_inflight_messages = 5  # (paho refuses to set it once connected)
        await asyncio.wait_for(asyncio.gather(
            *(a.publish("n/x", f"{i}".encode(), qos=1) for i in range(60))), 10)
        got = [await asyncio.wait_for(box.get(), 5) for _ in range(60)]
    assert [m.payload for m in got] == [f"{i}".encode() for i in range(60)]
