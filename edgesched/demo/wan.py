"""A loopback TCP relay between the edge nodes and the cloud node that can be made slow.

The demo's "WAN degraded" phase is real: edge nodes reach the cloud through this relay, which
delays every chunk by half the configured RTT plus its serialisation time at the configured
bandwidth, so the nodes *measure* the worse link, not only read it from device telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from edgesched.demo.cluster import WanSpec

log = logging.getLogger("edgesched.demo.wan")

CHUNK_BYTES = 64 * 1024


class WanEmulator:
    """Relay 127.0.0.1:<port> → 127.0.0.1:<target_port> with adjustable delay and bandwidth."""

    def __init__(self, target_port: int, conditions: WanSpec) -> None:
        self.target_port = target_port
        self.conditions = conditions
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> WanEmulator:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # ends the pumps of open connections
            writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _delay(self, nbytes: int) -> float:
        c = self.conditions
        return c.rtt_s / 2.0 + nbytes * 8.0 / c.uplink_bps

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError as exc:
            log.debug("cloud unreachable behind the WAN emulator: %s", exc)
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer),
                                  name="edgesched.demo.wan_up_loop")
                group.create_task(self._pump(up_reader, writer),
                                  name="edgesched.demo.wan_down_loop")
        except* (OSError, asyncio.IncompleteReadError):
            pass  # a reset connection ends the relay; the node sees the error itself
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while chunk := await src.read(CHUNK_BYTES):
            await asyncio.sleep(self._delay(len(chunk)))
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()
