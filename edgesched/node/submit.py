"""`edgesched submit`: send one task to a node and print its reply.

Over MQTT by default, configured like every other command: broker address, credentials, TLS
files and topic prefix come from the config (`--config`, `$EDGESCHED_CONFIG`, the
`EDGESCHED_MQTT__*` variables); explicit flags win. With `--url`, over HTTP to the node's API
(`POST /v1/tasks`, token and TLS like `edgesched status`).

Failing early and saying why: a broker that cannot be reached within `--connect-timeout`
is named (host:port) and the command exits 1; a node id that never published its retained
state on `P/node/ID/state` is reported with the node ids that did, before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Coroutine
from typing import Any

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions
from edgesched.config import NODE_ID_PATTERN, Settings, config_path_from_env, load_settings
from edgesched.errors import ConfigError, EdgeschedError, HttpError, MqttError, UsageError
from edgesched.node import protocol as p

log = logging.getLogger("edgesched.submit")

EXIT_OK = 0
EXIT_FAILED = 1
# How long retained node states may take to arrive after the subscription (they follow the
# SUBACK at once on a local broker; this bounds a slow or distant one).
STATE_WAIT_S = 1.5
MAX_KNOWN_SHOWN = 20  # node ids listed in the "never seen" message
_NODE_ID = re.compile(NODE_ID_PATTERN)  # ids of at most 64 characters: bounded memory
MAX_STATES = 10_000  # node states remembered while looking the node up (an id and a flag)


class SubmitFailed(EdgeschedError):
    """A failure already explained to the user: the message is printed as it is."""


def build_request(args: argparse.Namespace, reply_to: str | None,
                  correlation: str | None) -> dict[str, Any]:
    """The submit body (§4.4); `--input` must be JSON."""
    doc: dict[str, Any] = {"v": p.VERSION, "id": p.new_task_id(), "type": args.task_type}
    if reply_to is not None:
        doc["reply_to"] = reply_to
    if correlation is not None:
        doc["correlation_id"] = correlation
    if args.input is not None:
        try:
            doc["input"] = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON ({exc}); quote it for the shell, "
                             "e.g. --input '{\"data\": \"x\"}'") from None
    if args.deadline is not None:
        doc["deadline_s"] = args.deadline
    return doc


def tls_options(args: argparse.Namespace, settings: Settings | None = None) -> dict[str, Any]:
    """`--ca-file/--cert-file/--key-file` (else the config's mqtt.tls.*) as `MqttOptions`
    fields."""
    ca, cert, key = (getattr(args, name, None) for name in ("ca_file", "cert_file", "key_file"))
    if (cert is None) != (key is None):
        raise UsageError("--cert-file and --key-file go together: give both or neither")
    if cert is not None and ca is None:
        raise UsageError("--cert-file needs --ca-file too (to verify the broker)")
    for flag, path in (("--ca-file", ca), ("--cert-file", cert), ("--key-file", key)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if ca is None and settings is not None and settings.mqtt.tls.enabled:
        t = settings.mqtt.tls
        return {"tls_ca_file": str(t.ca_file),
                "tls_cert_file": str(t.cert_file) if t.cert_file else None,
                "tls_key_file": str(t.key_file) if t.key_file else None,
                "tls_check_hostname": t.check_hostname and not args.no_check_hostname}
    if ca is None:
        return {}
    return {"tls_ca_file": ca, "tls_cert_file": cert, "tls_key_file": key,
            "tls_check_hostname": not getattr(args, "no_check_hostname", False)}


def reply_topic_for(prefix: str, token: str, cert_file: str | None) -> str:
    """Without a certificate `P/client/TOKEN/reply`; with a device certificate the reply
    topic the broker ACL lets that device read: `P/device/<its CN>/reply/TOKEN`."""
    if cert_file is None:
        return f"{prefix}/client/{token}/reply"
    from edgesched.pki import certificate_common_name

    return f"{prefix}/device/{certificate_common_name(cert_file)}/reply/{token}"


def load_config(args: argparse.Namespace) -> Settings | None:
    """The config of `--config`/$EDGESCHED_CONFIG/env; None when it is unusable but the
    flags say enough (`--broker` or `--url`): a client need not read the daemon's secrets."""
    try:
        return load_settings(config_path_from_env(getattr(args, "config", None)))
    except ConfigError:
        if args.broker is None and args.url is None:
            raise
        log.debug("no usable config; going on with the flags", exc_info=True)
        return None


def mqtt_client_options(args: argparse.Namespace, settings: Settings | None,
                        token: str) -> MqttOptions:
    """The config's MQTT settings (when there is one) with the flags on top; a client id of
    its own, a clean session and a quick retry."""
    tls = tls_options(args, settings)
    base = MqttOptions()
    if settings is not None:  # what a client shares with the node's own connection
        m = settings.mqtt
        base = MqttOptions(
            host=m.host, port=m.port, protocol=m.protocol, username=m.username,
            password=m.password.get_secret_value() if m.password is not None else None,
            keepalive_s=m.keepalive_s, max_payload_bytes=m.max_payload_bytes)
    host, port = args.broker if args.broker is not None else (base.host, base.port)
    fields: dict[str, Any] = {"host": host, "port": port,
                              "client_id": f"edgesched-submit-{token}", "session_expiry_s": 0,
                              "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0,
                              "tls_ca_file": None, "tls_cert_file": None,
                              "tls_key_file": None, "tls_check_hostname": True}
    fields.update(tls)
    return dataclasses.replace(base, **fields)


async def submit_command(args: argparse.Namespace, shutdown_trigger: Awaitable[None]) -> int:
    """Submit one task, wait (bounded) for its reply, print it. Exit 0 when the reply's
    status is ok, 1 otherwise (also: no broker, unknown node, no reply in time)."""
    stop = asyncio.ensure_future(shutdown_trigger)  # awaited in every case: no warning
    try:
        settings = load_config(args)
        work: Coroutine[Any, Any, bytes]
        if args.url is not None:
            work = _submit_http(args, build_request(args, None, None))
        else:
            node = args.node
            if node is None:  # the node whose config this is (submitting on the gateway)
                if settings is None or config_path_from_env(args.config) is None:
                    raise UsageError("--node NODE_ID is required (or --config of that node)")
                node = settings.node_id
            work = _submit_mqtt(args, settings, node)
        payload = await _until(work, stop)
    except SubmitFailed as exc:
        print(f"edgesched submit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        stop.cancel()
    if payload is None:
        return EXIT_FAILED  # interrupted
    print(payload.decode("utf-8", "replace"))
    try:
        return EXIT_OK if json.loads(payload).get("status") == "ok" else EXIT_FAILED
    except (ValueError, AttributeError):
        return EXIT_FAILED


async def _submit_mqtt(args: argparse.Namespace, settings: Settings | None, node: str) -> bytes:
    token = uuid.uuid4().hex
    opts = mqtt_client_options(args, settings, token)
    broker = f"{opts.host}:{opts.port}"
    prefix = args.topic_prefix or (settings.mqtt.topic_prefix if settings else "edgesched")
    reply_topic = reply_topic_for(prefix, token, opts.tls_cert_file)
    body = build_request(args, reply_topic, token)
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    states: dict[str, bool] = {}  # node id -> its retained state says offline (bounded)
    seen = asyncio.Event()

    async def on_reply(msg: InboundMessage) -> None:
        if not got.done():
            got.set_result(msg.payload)

    async def on_state(msg: InboundMessage) -> None:
        node_id = msg.topic[len(prefix) + len("/node/"):].rpartition("/state")[0]
        if _NODE_ID.match(node_id) and msg.payload and len(states) < MAX_STATES:
            states[node_id] = _offline(msg.payload)
            if node_id == node:
                seen.set()

    # A device identity (client certificate) usually may not read node states (broker ACL):
    # then the node cannot be looked up and the submission just goes out. So does an
    # authenticated client that sees no node state at all (below).
    look_up = opts.tls_cert_file is None
    client = MqttClient(opts, Metrics())
    await client.subscribe(reply_topic, on_reply, qos=1)
    if look_up:
        await client.subscribe(f"{prefix}/node/+/state", on_state, qos=0)
    async with client:
        try:
            async with asyncio.timeout(args.connect_timeout):
                await client.wait_connected()
        except TimeoutError:
            raise SubmitFailed(
                f"cannot connect to the MQTT broker {broker} within {args.connect_timeout:g}s "
                "(is it running? check --broker, or mqtt.host/mqtt.port in the config and "
                "EDGESCHED_MQTT__HOST/EDGESCHED_MQTT__PORT)") from None
        if look_up:
            try:
                async with asyncio.timeout(STATE_WAIT_S):
                    await seen.wait()
            except TimeoutError:
                if states or opts.username is None:
                    raise SubmitFailed(_never_seen(node, broker, prefix, states)) from None
                # an authenticated client that sees no node at all: its ACL may hide them
                print(f"edgesched submit: note: no node state is readable on {broker} for "
                      f"user {opts.username!r} (broker ACL?); submitting to {node} anyway",
                      file=sys.stderr)
            if states.get(node):
                print(f"edgesched submit: note: node {node} is offline (its last state on "
                      f"{broker}); the broker keeps the task for it while its session lasts",
                      file=sys.stderr)
        try:
            await client.publish(p.submit_topic(prefix, node), p.encode(body), qos=1,
                                 response_topic=reply_topic, correlation_data=token.encode())
        except MqttError as exc:
            raise SubmitFailed(f"cannot publish to {broker}: {exc}") from None
        try:
            async with asyncio.timeout(args.timeout):
                return await got
        except TimeoutError:
            raise SubmitFailed(f"no reply from node {node} within {args.timeout:g}s (broker "
                               f"{broker}; --timeout sets the wait)") from None


def _never_seen(node: str, broker: str, prefix: str, states: dict[str, bool]) -> str:
    known = sorted(states)
    shown = ", ".join(f"{n} ({'offline' if states[n] else 'online'})"
                      for n in known[:MAX_KNOWN_SHOWN])
    more = f" and {len(known) - MAX_KNOWN_SHOWN} more" if len(known) > MAX_KNOWN_SHOWN else ""
    return (f"node {node} has never been seen on broker {broker} (no retained state on "
            f"{prefix}/node/{node}/state); known nodes: {shown + more if known else 'none'}"
            + ("" if known else " (a different broker or mqtt.topic_prefix?)"))


def _offline(state: bytes) -> bool:
    """Does a state document say offline? (A signed frame is searched for the same field.)"""
    try:
        doc = json.loads(state)
    except ValueError:
        return b'"status": "offline"' in state or b'"status":"offline"' in state
    return isinstance(doc, dict) and doc.get("status") == "offline"


async def _submit_http(args: argparse.Namespace, body: dict[str, Any]) -> bytes:
    """POST /v1/tasks on the node at --url; the reply document whatever the HTTP status."""
    import aiohttp

    from edgesched.node.client import target

    try:
        where = target(args)
    except HttpError as exc:
        raise SubmitFailed(str(exc)) from None
    url = where.url + "/v1/tasks"
    headers = {"Content-Type": "application/json"}
    if where.token:
        headers["Authorization"] = f"Bearer {where.token}"
    timeout = aiohttp.ClientTimeout(total=args.connect_timeout + args.timeout,
                                    sock_connect=args.connect_timeout)
    connector = aiohttp.TCPConnector(ssl=where.ssl_context if where.ssl_context else True)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session, \
                session.post(url, data=json.dumps(body).encode(), headers=headers) as resp:
            data = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise SubmitFailed(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    if status == 401:
        raise SubmitFailed(f"{url} answered HTTP 401: pass --token-file FILE (or --config "
                           "with its http.token_file)")
    try:
        json.loads(data)
    except ValueError:
        raise SubmitFailed(f"{url} answered HTTP {status}, not a task reply") from None
    return data


async def _until(awaitable: Coroutine[Any, Any, bytes], stop: asyncio.Future[Any]) -> Any:
    """The awaitable's result, or None when `stop` fires first."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None
