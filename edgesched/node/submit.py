"""`edgesched submit`: send one task to a node over MQTT and print its reply."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable
from typing import Any

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions
from edgesched.errors import MqttError, UsageError
from edgesched.node import protocol as p

EXIT_OK = 0
EXIT_FAILED = 1


def build_request(args: argparse.Namespace, reply_to: str, correlation: str) -> dict[str, Any]:
    """The submit body (§4.4); `--input` must be JSON."""
    doc: dict[str, Any] = {"v": p.VERSION, "id": p.new_task_id(), "type": args.task_type,
                           "reply_to": reply_to, "correlation_id": correlation}
    if args.input is not None:
        try:
            doc["input"] = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}") from None
    if args.deadline is not None:
        doc["deadline_s"] = args.deadline
    return doc


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """`--ca-file/--cert-file/--key-file` as `MqttOptions` fields (checked like mqtt.tls.*)."""
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


async def submit_command(args: argparse.Namespace, shutdown_trigger: Awaitable[None]) -> int:
    """Publish one submission, wait (bounded by --timeout) for the reply, print it.

    Exit 0 when the reply's status is ok, 1 otherwise (including no reply in time).
    """
    host, port = args.broker
    prefix = args.topic_prefix
    token = uuid.uuid4().hex
    tls = tls_options(args)
    reply_topic = reply_topic_for(prefix, token, tls.get("tls_cert_file"))
    body = build_request(args, reply_topic, token)
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_reply(msg: InboundMessage) -> None:
        if not got.done():
            got.set_result(msg.payload)

    client = MqttClient(MqttOptions(host=host, port=port, client_id=f"edgesched-submit-{token}",
                                    reconnect_initial_s=0.2, reconnect_max_s=2.0, **tls),
                        Metrics())
    await client.subscribe(reply_topic, on_reply, qos=1)
    stop = asyncio.ensure_future(shutdown_trigger)
    try:
        async with client, asyncio.timeout(args.timeout):
            await _until(client.wait_connected(), stop)
            if stop.done():
                return EXIT_FAILED
            await client.publish(p.submit_topic(prefix, args.node), p.encode(body), qos=1,
                                 response_topic=reply_topic, correlation_data=token.encode())
            payload = await _until(got, stop)
    except TimeoutError:
        print(f"edgesched submit: no reply from {args.node} within {args.timeout:g}s",
              file=sys.stderr)
        return EXIT_FAILED
    except MqttError as exc:
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


async def _until(awaitable: Awaitable[Any], stop: asyncio.Future[Any]) -> Any:
    """The awaitable's result, or None when `stop` fires first."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    return None
