"""MQTT adapter over aiomqtt: one owned connection, reconnects, subscriptions, bounded queues.

This is the only module that imports aiomqtt (and paho). Everything above it sees
`MqttClient`, `InboundMessage` and `edgesched.errors.MqttError`.

Data path of an incoming message (no extra hop through aiomqtt's message iterator):
paho reads it on the event loop -> `_DispatchQueue.put_nowait` drops it if it is larger than
`max_payload_bytes`, matches its topic against the subscriptions and puts it into each matching
subscription's own bounded queue (a full queue drops and counts it) -> one consumer loop per
subscription awaits its handler. A slow handler therefore only backs up its own queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt import _packet as _paho_packet
from paho.mqtt import properties as _paho_properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.signing import MessageSecurity, strip_frame
from edgesched.errors import MessageRejected, MqttError

log = logging.getLogger("edgesched.mqtt")
_PAHO_LOG = logging.getLogger("edgesched.mqtt.paho")

Handler = Callable[["InboundMessage"], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]

_TOPIC_CACHE_LIMIT = 16_384
_TOPIC_CACHE_MAX_CHARS = 256  # longer topics are matched every time: the cache stays < ~5 MB
_PUBLISH_TIMEOUT_S = 10.0
# publish_reliably: how long a reply waits for the broker to come back before it is given up
RECONNECT_WAIT_S = 30.0
_SUBSCRIBE_TIMEOUT_S = 10.0
# Packets read per readable-socket callback: all that have arrived, up to this many (paho
# reads one, or one per unacknowledged publish, then yields to every other ready task). What
# is not read waits where the intake cannot see it (the socket, the broker): at 100 a call a
# 2x overload on a busy machine backed up for seconds there (ok p99 9.4 s, RSS +35 MB; 1000:
# 0.65 s, +16 MB). A burst's messages count as received when all of it is read (~40 us a
# packet), see _read_burst.
READ_BURST_PACKETS = 1000
# paho reads a packet's header one byte per recv() call (3-4 calls a packet): the adapter
# reads the socket in chunks of this size and hands paho its bytes from them (_RecvBuffer)
RECV_CHUNK_BYTES = 64 * 1024
# ... and writes the packets queued since its last write with one send() (_coalesce_writes)
SEND_CHUNK_BYTES = 64 * 1024
DISCONNECT_TIMEOUT_S = 3.0  # how long a stop waits for the connection to close
# A consumer loop lets the rest of the node run after this many messages of a backlog.
CONSUME_YIELD_EVERY = 64


class RateLimitedLog:
    """Logs one line per key at most every `every_s` seconds, with how many were suppressed."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self._logger = logger
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 1024:  # bounded: keys are meant to be few (reasons, not ids)
            self._last.clear()
            self._suppressed.clear()
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        suffix = f" ({suppressed} similar messages suppressed)" if suppressed else ""
        self._logger.warning(msg + suffix, *args, exc_info=exc_info)


@dataclass(frozen=True, kw_only=True, slots=True)
class InboundMessage:
    """One received MQTT message, detached from aiomqtt/paho types."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    received_at: float = field(default_factory=time.monotonic)
    signer: str | None = None  # on a signed subscription: the verified signing node's id
    # on a `manual_ack` subscription: sends the QoS 1 PUBACK (call it once the message is
    # safe, e.g. spooled); None when the message needs no ack or was already acknowledged
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboundMessage:
    """A message to publish later, e.g. the Last Will (also published on a graceful stop)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    signed: bool = False  # signed with this node's key when publishing (security.key_file)


@dataclass(frozen=True, kw_only=True, slots=True)
class MqttOptions:
    """Connection parameters, taken from `settings.mqtt` by the composition root."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "edgesched"
    protocol: str = "5"  # "5" or "3.1.1"
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 10
    max_payload_bytes: int = 1 << 20
    incoming_queue: int = 10_000
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    # TLS (docs/security.md): on when tls_ca_file is set; mTLS with tls_cert_file + key_file
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    # > 0: a persistent session (v5 clean start false + Session Expiry Interval; 3.1.1 clean
    # session false): the broker keeps our subscriptions and queues QoS 1 messages for this
    # client id while we are away. 0: a clean session on every connect.
    session_expiry_s: int = 0


_warned_no_hostname_check: set[tuple[str, int]] = set()


def tls_context(opts: MqttOptions) -> ssl.SSLContext | None:
    """The client TLS context of `opts` (None = plain TCP), read afresh on every connect so a
    renewed certificate is picked up by the next reconnect.

    Server-verified against the CA only; with a client certificate when cert and key are given.
    Unreadable or malformed files raise `MqttError` naming the file.
    """
    if opts.tls_ca_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=opts.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise MqttError(f"cannot load the MQTT CA file {opts.tls_ca_file}: {exc}") from None
    if opts.tls_cert_file is not None and opts.tls_key_file is not None:
        try:
            ctx.load_cert_chain(certfile=opts.tls_cert_file, keyfile=opts.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttError(f"cannot load the MQTT client certificate {opts.tls_cert_file} "
                            f"with key {opts.tls_key_file}: {exc}") from None
    ctx.check_hostname = opts.tls_check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not opts.tls_check_hostname and (opts.host, opts.port) not in _warned_no_hostname_check:
        _warned_no_hostname_check.add((opts.host, opts.port))
        log.warning("mqtt.tls.check_hostname is off: any certificate signed by the CA is "
                    "accepted as the broker %s:%d", opts.host, opts.port)
    return ctx


def describe_connect_error(reason: str, *, tls: bool = False) -> str:
    """A connect failure with what to check, for the TLS reasons that are otherwise cryptic."""
    text = reason.lower()
    if tls and "timed out" in text:
        return (f"{reason} (TLS: no CONNACK: a broker that requires a client certificate "
                "drops a client without a valid one: check mqtt.tls.cert_file/key_file, and "
                "paho's 'failed to receive on socket' line for the broker's TLS alert)")
    if "hostname mismatch" in text or "ip address mismatch" in text:
        return (f"{reason} (TLS: the broker certificate does not name the host connected to: "
                "connect by a name in its subjectAltName, or set mqtt.tls.check_hostname: false)")
    if "certificate verify failed" in text:
        return (f"{reason} (TLS: the broker certificate is not signed by mqtt.tls.ca_file, or "
                "is expired)")
    if "certificate required" in text or "certificate unknown" in text or "bad certificate" in text:
        return (f"{reason} (TLS: the broker refused our client certificate: check "
                "mqtt.tls.cert_file/key_file and that they are signed by the broker's CA)")
    return reason


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (`+`, `#`, shared subscriptions `$share/group/...`)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flt = topic_filter.split("/")
    parts = topic.split("/")
    for i, level in enumerate(flt):
        if level == "#":
            return True
        if i >= len(parts):
            return False
        if level != "+" and level != parts[i]:
            return False
    return len(parts) == len(flt)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter in its upper half: spread reconnect storms."""
    cap = min(max_s, initial_s * 2.0 ** min(attempt, 30))
    return cap / 2 + rng.random() * cap / 2


class PackedProperties:
    """A PUBLISH's MQTT v5 properties, encoded once: all paho's publish asks of its
    `properties` is `pack()`. paho's own Properties object checks every attribute it is given
    against its whole name table and packs by walking it (~50 us a reply, more than the
    rest of publishing it); these are the same bytes (MQTT 5.0, 2.2.2)."""

    __slots__ = ("_packed", "_text")

    def __init__(self, packed: bytes, text: str) -> None:
        self._packed = packed
        self._text = text

    @classmethod
    def publish(cls, response_topic: str | None, correlation_data: bytes | None,
                user_properties: Sequence[tuple[str, str]] | None) -> PackedProperties:
        body = bytearray()
        if response_topic:
            body += b"\x08" + _binary(response_topic.encode())  # Response Topic
        if correlation_data is not None:
            body += b"\x09" + _binary(correlation_data)  # Correlation Data
        for key, value in user_properties or ():
            body += b"\x26" + _binary(key.encode()) + _binary(value.encode())  # User Property
        return cls(_varint(len(body)) + bytes(body),
                   f"[ResponseTopic: {response_topic!r}, CorrelationData: {correlation_data!r}]")

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:  # paho's debug log line of a sent PUBLISH
        return self._text


_P: Any = _paho_properties  # paho's (untyped) property readers


class _QuickProperties(Properties):
    """paho's Properties, built and (for a PUBLISH) read faster; the same attributes after.

    paho makes one for every packet it reads: its constructor rebuilds two tables of ~30
    entries and its reader finds each property's name by scanning them, then checks the
    name against them again when setting it: 42 us for a Response Topic and Correlation
    Data on the test box, 7.5 us this way (paho's took 115 us when the box was busy).
    This one shares the tables and reads the properties a PUBLISH carries (Response Topic,
    Correlation Data, Content Type, User Property) with paho's own value readers and checks;
    any other property goes through paho's reader. Installed in paho's client module below:
    this process's paho clients all use it (`tests/adapters/test_mqtt_properties.py`)."""

    _TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _STRINGS = {8: "ResponseTopic", 3: "ContentType"}

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", self._TABLES.types)
        object.__setattr__(self, "names", self._TABLES.names)
        object.__setattr__(self, "properties", self._TABLES.properties)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        if self.packetType != PacketTypes.PUBLISH or len(self.__dict__) > 4:  # not fresh
            return super().unpack(buffer)  # type: ignore[no-any-return,no-untyped-call]
        length, used = _P.VariableByteIntegers.decode(buffer)
        pos, end = used, used + length
        users: list[tuple[str, str]] = []
        found: dict[str, Any] = {}
        while pos < end:
            ident = buffer[pos]
            pos += 1
            left = end - pos
            if ident == 9:
                value, size = _P.readBytes(buffer[pos:], left)
                name = "CorrelationData"
            elif ident in self._STRINGS:
                value, size = _P.readUTF(buffer[pos:], left)
                name = self._STRINGS[ident]
            elif ident == 38:
                key, size = _P.readUTF(buffer[pos:], left)
                text, size2 = _P.readUTF(buffer[pos + size:], left - size)
                users.append((key, text))
                pos += size + size2
                continue
            else:  # anything else (or an identifier over one byte): paho's own way
                return super().unpack(buffer)  # type: ignore[no-any-return,no-untyped-call]
            if name in found:
                raise _P.MQTTException(f"Property '{name}' must not exist more than once")
            found[name] = value
            pos += size
        for name, value in found.items():
            object.__setattr__(self, name, value)
        if users:
            object.__setattr__(self, "UserProperty", users)
        return self, end


# What paho's readers make: its client module (CONNACK, ...) and, since paho 2.2, the module
# that decodes a PUBLISH (each submission).
paho.Properties = _QuickProperties  # type: ignore[attr-defined]
_paho_packet.Properties = _QuickProperties  # type: ignore[attr-defined]


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise MqttError(f"an MQTT property is {len(data)} bytes, the limit is 65535")
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _scan_only_when_queued(client: Any) -> None:
    """Make paho look for queued publishes to send only when there are some.

    After every PUBACK paho walks all its unacknowledged messages for ones still queued
    behind its in-flight window. The adapter's window is wide (`outgoing_window`), so there
    never are any, and the walk made every acknowledgement cost as many steps as there were
    replies awaiting theirs: 12 % of an overloaded node's CPU. paho 2.x internals
    (`_update_inflight`, `_out_messages`, `_inflight_messages`: every message it keeps is
    QoS 1 or 2, in flight or queued)."""
    scan = client._update_inflight

    def update_inflight() -> Any:
        if len(client._out_messages) <= client._inflight_messages:
            return paho.MQTT_ERR_SUCCESS  # all in flight: none queued to send
        return scan()

    client._update_inflight = update_inflight


def outgoing_window(opts: MqttOptions) -> int:
    """How many QoS 1 messages may await the broker's acknowledgement (past it a publish is
    refused and counted, `..._dropped_total{reason="outgoing_queue_full"}`)."""
    return opts.incoming_queue + READ_BURST_PACKETS


class _RecvBuffer:
    """paho's `_sock_recv(n)` served from chunks of the socket: paho asks for a packet's first
    byte, then its length one byte at a time, then its body, one recv() system call each; this
    reads up to RECV_CHUNK_BYTES at once and answers paho's calls from them. Installed on one
    paho client (one connection); paho's own `_sock_recv` still does the reading, so its
    handling of TLS and of a lost socket is unchanged.

    With `chunked` False (the end of a read burst) an empty buffer is refilled with no more
    than paho asks for, as paho itself reads."""

    def __init__(self, client: Any) -> None:
        self._read: Callable[[int], bytes] = client._sock_recv  # paho's own, bound
        self._client = client
        self._chunk = b""
        self._pos = 0
        self._sock: object = None  # the socket the chunk came from
        self.chunked = True
        client._sock_recv = self

    @property
    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._chunk) - self._pos if self._sock is self._client._sock else 0

    def __call__(self, bufsize: int) -> bytes:
        if not self.buffered:
            if not self.chunked:
                return self._read(bufsize)
            data = self._read(RECV_CHUNK_BYTES)  # BlockingIOError when there is none
            if len(data) <= bufsize:  # all of it (b"" when the peer closed)
                return data
            self._chunk, self._pos, self._sock = data, 0, self._client._sock
        start = self._pos
        self._pos = min(start + bufsize, len(self._chunk))
        return self._chunk[start:self._pos]


def _coalesce_writes(client: Any) -> None:
    """Make paho write its queued packets with one send() instead of one each.

    paho queues every outgoing packet (a reply, the PUBACK of a submission) and, when the
    socket is writable, sends them one system call each. Before paho's own `_packet_write`
    runs, the queued packets that need nothing from paho once written (all but QoS 0
    PUBLISHes, whose written callback paho calls, and DISCONNECT, after which paho closes the
    socket) are joined, each run of them in order and up to SEND_CHUNK_BYTES, into one
    packet; paho sends it and keeps what the socket did not take for its next write, as with
    any packet. paho 2.x internals (`_out_packet`, `_packet_write`), like the rest of this
    adapter's reading."""
    write = client._packet_write
    out = client._out_packet

    def joined(run: list[Any]) -> list[Any]:
        if len(run) < 2:
            return run
        data = b"".join(p["packet"][p["pos"]:] for p in run)
        return [{"command": paho.PUBACK, "mid": 0, "qos": 0, "pos": 0,
                 "to_process": len(data), "packet": data, "info": None}]

    def packet_write() -> Any:
        if len(out) > 1:
            packets: list[Any] = []
            run: list[Any] = []
            size = 0
            for packet in out:
                kind = packet["command"] & 0xF0
                alone = kind == paho.DISCONNECT or (kind == paho.PUBLISH and packet["qos"] == 0)
                if alone or size >= SEND_CHUNK_BYTES:
                    packets += joined(run)
                    run, size = [], 0
                if alone:
                    packets.append(packet)
                else:
                    run.append(packet)
                    size += packet["to_process"]
            packets += joined(run)
            if len(packets) < len(out):
                out.clear()
                out.extend(packets)
        return write()

    client._packet_write = packet_write


class _Subscription:
    """One topic filter, its bounded queue and the handler its consumer loop awaits."""

    def __init__(self, topic_filter: str, handler: Handler, qos: int, queue_size: int, *,
                 signed: bool = False, persistent: bool = False,
                 conflate: bool = False, manual_ack: bool = False,
                 overflow: Callable[[InboundMessage], bool] | None = None) -> None:
        self.topic_filter = topic_filter
        self.manual_ack = manual_ack
        self.overflow = overflow
        self.handler = handler
        self.qos = qos
        self.signed = signed
        self.persistent = persistent
        # conflated: only the newest queued message of each topic is handled (telemetry)
        self.conflate = conflate
        self.newest: dict[str, InboundMessage] = {}
        self.queue: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=queue_size)
        self.started = False


class MqttClient:
    """The node's one MQTT connection, as an async context manager.

    Extension points for other components:

    - `await subscribe(topic_filter, handler, qos=0, queue_size=None)`: `handler` is
      `async (InboundMessage) -> None`, awaited by this subscription's own consumer loop from a
      bounded queue (default size `mqtt.incoming_queue`); a full queue drops and counts
      (`edgesched_mqtt_messages_dropped_total{reason="incoming_queue_full"}`). Subscribing is
      allowed before or after the client is started; subscriptions are renewed on every connect.
    - `await publish(topic, payload, qos=0, retain=False, response_topic=None,
      correlation_data=None, user_properties=None)`; raises `MqttError` when not connected or
      the broker does not acknowledge in time. MQTT v5 properties are left out on 3.1.1.
    - `await publish_reliably(topic, payload, correlation_data=None, signed=False)`: QoS 1,
      and when the broker is gone one retry after a bounded wait for the reconnect (replies).
    - `on_connect(hook)`: `async () -> None` awaited after every (re)connect, once the
      subscriptions are renewed (e.g. to republish a retained state document).
    - `connected`, `disconnected_for()`, `wait_connected()`.

    With `will` set, the broker publishes it when the connection is lost, and a graceful stop
    publishes it too before disconnecting.
    """

    def __init__(
        self,
        options: MqttOptions,
        metrics: Metrics,
        *,
        will: OutboundMessage | None = None,
        rng: random.Random | None = None,
        security: MessageSecurity | None = None,
    ) -> None:
        self.options = options
        self._metrics = metrics
        self._security = security
        self._will = will
        self._goodbye: Callable[[], OutboundMessage] | None = None
        self._rng = rng or random.Random()
        self._subs: list[_Subscription] = []
        self._topic_cache: dict[str, tuple[_Subscription, ...]] = {}
        self._hooks: list[ConnectHook] = []
        self._client: aiomqtt.Client | None = None
        self._connected_event = asyncio.Event()
        self._disconnected_since: float | None = time.monotonic()
        self._ever_connected = False
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ratelog = RateLimitedLog(log)
        self._paho: Any = None  # the paho client of the current connection (manual acks)
        self._unacked: dict[int, asyncio.Future[None]] = {}  # our QoS 1 publishes, by mid
        self._burst: list[InboundMessage] | None = None  # messages of the read in progress
        self._manual_ack = False

    # ---- public API ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._client is not None and self._connected_event.is_set()

    def disconnected_for(self, now: float | None = None) -> float:
        """Seconds since the connection was lost (or since start when never connected)."""
        if self.connected or self._disconnected_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self._disconnected_since

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    def set_will(
        self,
        will: OutboundMessage | None,
        *,
        goodbye: Callable[[], OutboundMessage] | None = None,
    ) -> None:
        """The Last Will for the next connection; `goodbye()` builds the message a graceful
        stop publishes instead of the Will (default: the Will itself)."""
        self._will = will
        self._goodbye = goodbye

    def on_connect(self, hook: ConnectHook) -> None:
        """Run `hook` after every (re)connect; a failing hook is logged, never fatal."""
        self._hooks.append(hook)

    async def subscribe(
        self, topic_filter: str, handler: Handler, *, qos: int = 0, queue_size: int | None = None,
        signed: bool = False, persistent: bool = False, conflate: bool = False,
        manual_ack: bool = False, overflow: Callable[[InboundMessage], bool] | None = None,
    ) -> None:
        """Deliver messages matching `topic_filter` to `handler` (see the class docstring).

        `signed=True` marks a node-to-node topic: with `security` configured only verified
        messages reach the handler (`InboundMessage.signer` names the signer; refusals are
        counted in `edgesched_messages_rejected_total{reason}`); without it, signature headers
        are stripped. `persistent=True` for retained documents and Last Wills (see
        `signing.Verifier`). `conflate=True` (periodic telemetry: the latest value wins): when
        the handler falls behind, a message whose topic has a newer one queued is skipped
        before it costs a signature check (`..._dropped_total{reason="superseded"}`).
        `manual_ack=True` (the submit topic with a spool): a QoS 1 message is acknowledged
        to the broker only when the handler calls `msg.ack()` (paho's manual acks; every
        other subscription is still acknowledged on receipt). Must be subscribed before the
        client starts (paho's manual-ack mode is set per connection). `overflow(msg)` is
        called, on the read path, with a message the full queue cannot take: True when it
        answered it (an overloaded node's submissions), else it is dropped and counted
        (`..._dropped_total{reason="incoming_queue_full"}`); not for a signed subscription (the
        message is not verified yet).
        """
        if overflow is not None and signed:
            raise ValueError("an overflow handler would see unverified messages: not with signed")
        sub = _Subscription(topic_filter, handler, qos, queue_size or self.options.incoming_queue,
                            signed=signed, persistent=persistent, conflate=conflate,
                            manual_ack=manual_ack, overflow=overflow)
        self._subs.append(sub)
        self._topic_cache.clear()
        if self._tg is not None:
            self._start_consumer(sub)
        client = self._client
        if client is not None and self.connected:
            await self._subscribe_one(client, sub)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Sequence[tuple[str, str]] | None = None,
        timeout_s: float = _PUBLISH_TIMEOUT_S,
        signed: bool = False,
    ) -> None:
        """Publish one message; raises `MqttError` when not connected or on failure.

        `signed=True` (node-to-node topics) signs it with this node's key when one is set."""
        client = self._client
        if client is None or not self.connected:
            raise MqttError(f"cannot publish to {topic}: not connected to the broker")
        if signed:
            payload = self._sign(topic, payload)
        props = self._properties(response_topic, correlation_data, user_properties)
        try:
            await self._publish(topic, payload, qos, retain, props, timeout_s)
        except aiomqtt.MqttError as exc:
            if getattr(exc, "rc", None) == paho.MQTT_ERR_QUEUE_SIZE:
                self._metrics.messages_dropped.labels(reason="outgoing_queue_full").inc()
                self._ratelog.warning("outgoing", "outgoing queue full (%d): not published to "
                                      "%s", self.options.incoming_queue, topic)
            raise MqttError(f"publish to {topic} failed: {exc}") from exc

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                       props: PackedProperties | None, timeout_s: float) -> None:
        """paho's publish, then (QoS 1/2) a wait for the broker's acknowledgement on a future
        of our own. aiomqtt's `publish` scans every pending publish twice per call (and
        logs a warning per call past 10 pending): with a few hundred replies in flight under
        load that cost more than the task itself (docs/scaling.md)."""
        info = self._paho.publish(topic, payload, qos, retain, props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0 or info.is_published():
            return
        acked = asyncio.get_running_loop().create_future()
        self._unacked[info.mid] = acked
        try:
            async with asyncio.timeout(timeout_s):
                await acked
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None
        finally:
            if self._unacked.get(info.mid) is acked:
                del self._unacked[info.mid]

    def _on_publish_acked(self, mid: int) -> bool:
        """paho's on_publish for one of our publishes: resolve its future (True), or
        False when it is not ours (aiomqtt's own, e.g. none today)."""
        acked = self._unacked.pop(mid, None)
        if acked is None:
            return False
        if not acked.done():
            acked.set_result(None)
        return True

    def _fail_unacked(self, reason: str) -> None:
        """The connection is gone: what waits for an acknowledgement will not get it."""
        unacked, self._unacked = self._unacked, {}
        for acked in unacked.values():
            if not acked.done():
                acked.set_exception(aiomqtt.MqttError(f"connection lost: {reason}"))

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1,
                       correlation_data: bytes | None = None) -> bool:
        """Hand one message to the connection without waiting for the broker's
        acknowledgement: the cheap path for answers the node must send in bulk when it is
        overloaded. paho holds it until the broker acknowledges it; if the connection drops
        first it is lost (unlike `publish_reliably`, nothing waits to send it again). False
        when not connected or paho refused it (its outgoing queue is full)."""
        if self._client is None or not self.connected:
            return False
        props = self._properties(None, correlation_data, None)
        info = self._paho.publish(topic, payload, qos, False, props)
        return bool(info.rc == paho.MQTT_ERR_SUCCESS)

    async def publish_reliably(
        self,
        topic: str,
        payload: bytes,
        *,
        correlation_data: bytes | None = None,
        signed: bool = False,
        reconnect_wait_s: float = RECONNECT_WAIT_S,
    ) -> None:
        """Publish at QoS 1; when the broker is gone, wait (at most `reconnect_wait_s`) for
        the reconnect and retry once, so a short broker outage does not cost a task its only
        reply. Raises `MqttError` when that retry fails too, or the broker stays away."""
        try:
            await self.publish(topic, payload, qos=1, correlation_data=correlation_data,
                               signed=signed)
            return
        except MqttError:
            if self.connected:
                raise
        try:
            async with asyncio.timeout(reconnect_wait_s):
                await self.wait_connected()
        except TimeoutError:
            raise MqttError(f"cannot publish to {topic}: not connected to the broker for "
                            f"{reconnect_wait_s:g}s") from None
        await self.publish(topic, payload, qos=1, correlation_data=correlation_data,
                           signed=signed)

    # ---- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for sub in self._subs:
            self._start_consumer(sub)
        self._tasks.append(self._tg.create_task(
            self._connection_loop(), name="edgesched.mqtt.connection_loop"
        ))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Graceful stop: publish the Will ourselves, disconnect, stop the loops."""
        await self._publish_will()
        # Cancelling the connection loop leaves aiomqtt's context: a clean DISCONNECT.
        for task in self._tasks:
            task.cancel()
        for sub in self._subs:
            sub.started = False
        tg, self._tg, self._tasks = self._tg, None, []
        if tg is not None:
            # Bounded: a broker that never closes after our DISCONNECT (seen once, with the
            # demo's embedded broker, when the connection came up during a failed start) must
            # not keep the process from exiting. On timeout the tasks are cancelled again.
            try:
                async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                    await tg.__aexit__(None, None, None)
            except TimeoutError:
                log.warning("the MQTT connection did not close within %gs of DISCONNECT; "
                            "dropped", DISCONNECT_TIMEOUT_S)

    async def _publish_will(self) -> None:
        msg = self._goodbye() if self._goodbye is not None else self._will
        if msg is None or not self.connected:
            return
        try:
            await self.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                               timeout_s=2.0, signed=msg.signed)
        except MqttError as exc:
            log.warning("could not publish the offline state before disconnecting: %s", exc)

    # ---- connection ---------------------------------------------------------------------
    def _new_client(self) -> aiomqtt.Client:
        opts = self.options
        v5 = opts.protocol == "5"
        will = None
        if self._will is not None:
            payload = self._will.payload
            if self._will.signed:  # signed afresh for each connection
                payload = self._sign(self._will.topic, payload)
            will = aiomqtt.Will(
                topic=self._will.topic, payload=payload, qos=self._will.qos,
                retain=self._will.retain,
            )
        persistent = opts.session_expiry_s > 0
        session = None
        if v5:
            session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if persistent:
                session.SessionExpiryInterval = opts.session_expiry_s
            # How many QoS 1 messages the broker may have unacknowledged to us. Without it
            # mosquitto uses its max_inflight_messages (20) and queues the rest per client,
            # dropping past max_queued_messages (1000) without a word when we fall behind;
            # with it, what we cannot take yet waits in our bounded queues, where the
            # intake sheds it (rejected, overloaded) and every drop is counted.
            session.ReceiveMaximum = max(1, min(65_535, opts.incoming_queue))
        client = aiomqtt.Client(
            opts.host,
            opts.port,
            username=opts.username,
            password=opts.password,
            identifier=opts.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=None if v5 else not persistent,
            clean_start=False if v5 and persistent else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=session,
            keepalive=opts.keepalive_s,
            timeout=max(5.0, float(opts.keepalive_s)),
            queue_type=self._queue_factory(),
            # Unacknowledged outgoing messages: a reply for every submission the queue holds
            # and for every one a read burst answers at once when that queue is full (an
            # overloaded node's replies are published before paho can write any of them).
            max_queued_outgoing_messages=outgoing_window(opts),
            # paho's default (20 unacknowledged QoS 1 publishes, the rest queued in paho) made
            # replies wait for PUBACKs from a busy loop: a bounded window as wide as the queue
            max_inflight_messages=outgoing_window(opts),
            # Without TCP_NODELAY every small publish waits for the peer's delayed ACK
            # (~40 ms each way on Linux): a loopback request/reply took ~90 ms, not ~1 ms.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            tls_context=tls_context(opts),
            # paho's own lines under our tree, not the bare `mqtt` logger (edgesched/logs.py
            # demotes its "failed to receive on socket" ERROR: _on_lost reports the loss)
            logger=_PAHO_LOG,
        )
        # aiomqtt 2.5 does not expose paho's manual acks: set them on its paho client (its
        # `_client`), so a submission is acknowledged only once it is safe (spooled).
        self._manual_ack = any(sub.manual_ack for sub in self._subs)
        self._paho = client._client
        aiomqtt_on_publish = self._paho.on_publish

        def on_publish(*args: Any) -> None:  # (client, userdata, mid, reason_code, properties)
            if not self._on_publish_acked(args[2]):
                aiomqtt_on_publish(*args)

        self._paho.on_publish = on_publish
        self._paho.loop_read = self._read_burst(self._paho, _RecvBuffer(self._paho))
        _coalesce_writes(self._paho)
        _scan_only_when_queued(self._paho)
        if self._manual_ack:
            self._paho.manual_ack_set(True)
        return client

    def _read_burst(self, client: Any, recv: _RecvBuffer) -> Callable[..., int]:
        """paho's `loop_read`, reading every packet already received (up to
        READ_BURST_PACKETS) instead of one: aiomqtt calls it once per loop iteration, so
        under load one packet per iteration let the socket, then the broker's queue for this
        client, fill up. paho 2.x internals (`_sock`, `_packet_read`, `_loop_rc_handle`),
        the same calls as its own loop_read. The socket is read in chunks (`recv`); once the
        burst has its packets no new chunk is read, but the packets already in the last one
        are: the socket will not say they are there.

        Every message of a burst is stamped `received_at` when the burst has been read: the
        time the node spends reading is not time a message waited for a busy node (a flood
        on one topic read in one burst must not make a submission read with it look late)."""

        def loop_read(max_packets: int = 1) -> int:
            burst: list[InboundMessage] = []
            self._burst = burst
            recv.chunked = True
            packets = 0
            try:
                while True:
                    if client._sock is None:
                        return int(paho.MQTT_ERR_NO_CONN)
                    if packets >= READ_BURST_PACKETS:
                        if not recv.buffered:
                            break
                        recv.chunked = False  # finish the chunk, read no other
                    rc = client._packet_read()
                    packets += 1
                    if rc > 0:
                        return int(client._loop_rc_handle(rc))
                    if rc == paho.MQTT_ERR_AGAIN:
                        break
                return int(paho.MQTT_ERR_SUCCESS)
            finally:
                self._burst = None
                read = time.monotonic()
                for msg in burst:  # frozen for everyone else; nothing has seen them yet
                    object.__setattr__(msg, "received_at", read)

        return loop_read

    def _ack_later(self, mid: int, qos: int) -> Callable[[], None]:
        paho_client = self._paho
        done = False

        def ack() -> None:
            nonlocal done
            if done:
                return
            done = True
            if paho_client is not self._paho:
                return  # that connection is gone: the broker redelivers on the new session
            try:
                paho_client.ack(mid, qos)
            except Exception as exc:  # a lost socket: the broker redelivers
                log.debug("could not acknowledge message %d: %s", mid, exc)

        return ack

    def _queue_factory(self) -> Any:
        owner = self

        class _Bound(_DispatchQueue):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(owner)

        return _Bound

    async def _connection_loop(self) -> None:
        attempt = 0
        opts = self.options
        while True:
            try:
                client = self._new_client()  # raises MqttError on unloadable TLS files
                async with client:
                    attempt = 0
                    await self._on_connected(client)
                    # Our dispatch queue never holds a message, so this only returns (raises)
                    # when the connection is lost.
                    async for _ in client.messages:
                        pass
            except (aiomqtt.MqttError, MqttError) as exc:  # ours: a failed (re)subscribe
                self._on_lost(f"{exc}")
            except OSError as exc:  # socket-level failures that slip past aiomqtt
                self._on_lost(f"{exc}")
            finally:
                self._mark_disconnected()
            delay = backoff_delay(attempt, opts.reconnect_initial_s, opts.reconnect_max_s,
                                  self._rng)
            attempt += 1
            log.debug("reconnecting to %s:%d in %.2fs", opts.host, opts.port, delay)
            await asyncio.sleep(delay)

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        opts = self.options
        self._client = client
        for sub in self._subs:
            await self._subscribe_one(client, sub)
        self._connected_event.set()
        self._disconnected_since = None
        self._metrics.mqtt_connected.set(1)
        if self._ever_connected:
            self._metrics.mqtt_reconnects.inc()
            log.info("reconnected to MQTT broker %s:%d", opts.host, opts.port)
        else:
            log.info("connected to MQTT broker %s:%d (MQTT %s, client id %s)",
                     opts.host, opts.port, opts.protocol, opts.client_id)
        self._ever_connected = True
        for hook in list(self._hooks):
            try:
                await hook()
            except Exception:  # a component's hook must not take the connection down
                log.exception("on-connect hook %s failed", getattr(hook, "__qualname__", hook))

    def _on_lost(self, reason: str) -> None:
        opts = self.options
        reason = describe_connect_error(reason, tls=opts.tls_ca_file is not None)
        if self._client is not None and self._connected_event.is_set():
            log.warning("lost connection to MQTT broker %s:%d: %s", opts.host, opts.port, reason)
        else:
            self._ratelog.warning("connect", "cannot connect to MQTT broker %s:%d: %s",
                                  opts.host, opts.port, reason)

    def _mark_disconnected(self) -> None:
        self._fail_unacked("disconnected")
        if self._disconnected_since is None:
            self._disconnected_since = time.monotonic()
        self._client = None
        self._connected_event.clear()
        self._metrics.mqtt_connected.set(0)

    async def _subscribe_one(self, client: aiomqtt.Client, sub: _Subscription) -> None:
        try:
            granted = await client.subscribe(sub.topic_filter, qos=sub.qos,
                                             timeout=_SUBSCRIBE_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            raise MqttError(f"subscribe to {sub.topic_filter} failed: {exc}") from exc
        codes = [getattr(code, "value", code) for code in granted]
        if any(isinstance(code, int) and code >= 0x80 for code in codes):
            # e.g. a broker ACL: not fatal for the node, but nothing will arrive there
            log.error("the broker refused the subscription to %s (reason codes %s): check its "
                      "ACL for this node", sub.topic_filter, codes)

    def _properties(
        self,
        response_topic: str | None,
        correlation_data: bytes | None,
        user_properties: Sequence[tuple[str, str]] | None,
    ) -> PackedProperties | None:
        if self.options.protocol != "5" or not (
            response_topic or correlation_data or user_properties
        ):
            return None
        return PackedProperties.publish(response_topic, correlation_data, user_properties)

    # ---- incoming path ------------------------------------------------------------------
    def _start_consumer(self, sub: _Subscription) -> None:
        if sub.started or self._tg is None:
            return
        sub.started = True
        self._tasks.append(
            self._tg.create_task(self._consume_loop(sub), name="edgesched.mqtt.consume_loop")
        )

    def _sign(self, topic: str, payload: bytes) -> bytes:
        return payload if self._security is None else self._security.signer.sign(topic, payload)

    def _verified(self, sub: _Subscription, msg: InboundMessage) -> InboundMessage | None:
        """The message with its signature checked and stripped; None when refused."""
        if self._security is None:  # not verifying: only a signed frame needs its header off
            body = strip_frame(msg.payload)
            return msg if body is msg.payload else dataclasses.replace(msg, payload=body)
        if not msg.payload and sub.persistent:
            return msg  # a cleared retained document: nothing to sign, nothing to act on
        try:
            ok = self._security.verifier.verify(msg.topic, msg.payload,
                                                persistent=sub.persistent, retained=msg.retain)
        except MessageRejected as exc:
            self._metrics.messages_rejected.labels(reason=exc.reason.value).inc()
            self._ratelog.warning(f"sig:{exc.reason.value}", "refused a message on %s (%s): %s",
                                  msg.topic, exc.reason.value, exc)
            return None
        return dataclasses.replace(msg, payload=ok.body, signer=ok.signer)

    def reject_signer(self, msg: InboundMessage, claimed: str) -> bool:
        """True (and counted as `wrong_signer`) when a verified message was signed by another
        node than the one it speaks for; callers drop it."""
        if self._security is None or msg.signer == claimed:
            return False
        self._metrics.messages_rejected.labels(reason="wrong_signer").inc()
        self._ratelog.warning("sig:wrong_signer", "refused a message on %s: signed by %s, but "
                              "it speaks for %s", msg.topic, msg.signer, claimed)
        return True

    async def _consume_loop(self, sub: _Subscription) -> None:
        queue = sub.queue
        handler = sub.handler
        taken = 0
        while True:
            msg = await queue.get()  # returns at once, without yielding, while it has messages
            taken += 1
            if taken % CONSUME_YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a long backlog must not hold off HTTP and timers
            if sub.conflate:
                if sub.newest.get(msg.topic) is not msg:
                    self._metrics.messages_dropped.labels(reason="superseded").inc()
                    continue
                del sub.newest[msg.topic]
            if sub.signed:
                checked = self._verified(sub, msg)
                if checked is None:
                    continue
                msg = checked
            try:
                await handler(msg)
            except Exception:  # one bad message must not stop its subscription
                self._ratelog.warning(
                    f"handler:{sub.topic_filter}", "handler for %s failed on a message on %s",
                    sub.topic_filter, msg.topic, exc_info=True,
                )

    def _matching(self, topic: str) -> tuple[_Subscription, ...]:
        subs = self._topic_cache.get(topic)
        if subs is None:
            subs = tuple(s for s in self._subs if topic_matches(s.topic_filter, topic))
            if len(topic) <= _TOPIC_CACHE_MAX_CHARS:
                if len(self._topic_cache) >= _TOPIC_CACHE_LIMIT:
                    self._topic_cache.clear()
                self._topic_cache[topic] = subs
        return subs

    def _deliver(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        topic = message.topic.value
        if len(payload) > self.options.max_payload_bytes:
            if self._manual_ack and message.qos > 0:
                self._ack_later(message.mid, message.qos)()
            self._metrics.messages_dropped.labels(reason="oversize").inc()
            self._ratelog.warning("oversize", "dropped a %d-byte message on %s: over "
                                  "mqtt.max_payload_bytes=%d", len(payload), topic,
                                  self.options.max_payload_bytes)
            return
        subs = self._matching(topic)
        ack = None
        if self._manual_ack and message.qos > 0:
            ack = self._ack_later(message.mid, message.qos)
            if not any(sub.manual_ack for sub in subs):
                ack()  # acknowledged on receipt, as without manual acks
                ack = None
        if not subs:
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        user_props = tuple(getattr(props, "UserProperty", ()) or ()) if props else ()
        msg = InboundMessage(
            topic=topic, payload=bytes(payload), qos=message.qos, retain=bool(message.retain),
            response_topic=response_topic, correlation_data=correlation,
            user_properties=user_props, ack=ack,
        )
        if self._burst is not None:
            self._burst.append(msg)
        for sub in subs:
            try:
                sub.queue.put_nowait(msg)
                if sub.conflate:
                    sub.newest[topic] = msg
            except asyncio.QueueFull:
                answered = False
                if sub.overflow is not None:
                    try:
                        answered = sub.overflow(msg)
                    except Exception:  # never let a bad message break paho's read loop
                        log.exception("overflow handler for %s failed", sub.topic_filter)
                if ack is not None and sub.manual_ack:
                    ack()  # answered, or dropped and counted: the broker must not hold it
                if answered:
                    continue
                self._metrics.messages_dropped.labels(reason="incoming_queue_full").inc()
                self._ratelog.warning(
                    f"full:{sub.topic_filter}", "incoming queue of %s is full (%d): dropped a "
                    "message on %s", sub.topic_filter, sub.queue.maxsize, topic,
                )


class _DispatchQueue(asyncio.Queue[aiomqtt.Message]):
    """Stands in for aiomqtt's message queue: routes each message straight to subscriptions."""

    def __init__(self, owner: MqttClient) -> None:
        super().__init__(maxsize=0)
        self._owner = owner

    def put_nowait(self, item: aiomqtt.Message) -> None:
        try:
            self._owner._deliver(item)
        except Exception:  # never let a bad message break paho's read loop
            log.exception("could not dispatch a message on %s", item.topic)
