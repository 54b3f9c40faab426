"""A tiny bounded HTTP/1.0 GET over asyncio streams, for polling the demo's nodes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from edgesched.errors import TransportError

MAX_RESPONSE_BYTES = 4 << 20


class ProbeError(TransportError):
    """The node did not answer, or answered something unusable."""


async def http_get(host: str, port: int, path: str, *, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """`(status, body)` of `GET path`; raises ProbeError on any transport problem."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
                await writer.drain()
                raw = await reader.read(MAX_RESPONSE_BYTES)
                while len(raw) < MAX_RESPONSE_BYTES:
                    more = await reader.read(MAX_RESPONSE_BYTES - len(raw))
                    if not more:
                        break
                    raw += more
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise ProbeError(f"GET http://{host}:{port}{path}: {exc or type(exc).__name__}") from exc
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ProbeError(f"GET http://{host}:{port}{path}: not an HTTP response")
    return int(status_line[1]), body


async def get_json(host: str, port: int, path: str, *, timeout_s: float = 2.0) -> Any:
    status, body = await http_get(host, port, path, timeout_s=timeout_s)
    if status != 200:
        raise ProbeError(f"GET {path} answered {status}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProbeError(f"GET {path}: body is not JSON") from exc


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of metric `name` (all label sets) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue  # another metric whose name starts with this one
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
    return total
