"""The demo's WAN relay passes bytes both ways and really adds the configured delay."""

from __future__ import annotations

import asyncio
import time

from edgesched.demo.cluster import WanSpec
from edgesched.demo.wan import WanEmulator


async def _echo_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10.0)
    elapsed = time.monotonic() - start
    writer.close()
    return got, elapsed


async def test_relay_echoes_and_degraded_link_is_slower() -> None:
    server = await _echo_server()
    target = server.sockets[0].getsockname()[1]
    try:
        async with WanEmulator(target, WanSpec(rtt_s=0.0, uplink_bps=1e9)) as wan:
            got, _ = await _round_trip(wan.port, b"ping" * 100)
            assert got == b"ping" * 100
            wan.conditions = WanSpec(rtt_s=0.3, uplink_bps=1e9)
            got, elapsed = await _round_trip(wan.port, b"pong")
            assert got == b"pong"
            assert elapsed >= 0.3  # half the RTT each way, at least
    finally:
        server.close()
        await server.wait_closed()


async def test_relay_closes_when_the_cloud_is_down() -> None:
    server = await _echo_server()
    target = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with WanEmulator(target, WanSpec(rtt_s=0.0, uplink_bps=1e9)) as wan:
        reader, writer = await asyncio.open_connection("127.0.0.1", wan.port)
        assert await asyncio.wait_for(reader.read(10), 5.0) == b""
        writer.close()
