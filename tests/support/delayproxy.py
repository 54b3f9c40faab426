"""A TCP proxy on loopback that delays every byte by a fixed time in each direction.

Used to make a bridged broker's regional hop measurably slower than a site's own broker
(a WAN link between sites), without `tc netem` (which needs a network namespace). The proxy
runs its own asyncio loop in a background thread, so a test may block (wait_until, sleep)
while traffic flows. `stop()` closes the listener and every open connection: to the two
ends it is a broken link. `start()` again listens on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

from tests.support.broker import free_port

CHUNK = 65_536
MAX_BUFFERED_BYTES = 4 << 20  # per direction: reading pauses while this much waits


@dataclass
class DelayProxy:
    """`listen_port` on 127.0.0.1 forwards to `target_host:target_port`, `delay_s` each way."""

    target_host: str
    target_port: int
    delay_s: float = 0.02
    listen_port: int = field(default_factory=free_port)
    connections: int = 0  # accepted so far (a reconnecting bridge adds one each time)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def start(self) -> DelayProxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._accept, "127.0.0.1", self.listen_port, reuse_address=True))
            except OSError as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"delayproxy-{self.listen_port}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("delay proxy did not start within 10 s")
        if failure:
            self._thread = None
            raise RuntimeError(f"delay proxy cannot listen on {self.listen_port}: {failure[0]}")
        return self

    def stop(self) -> None:
        """Close the listener and cut every open connection (both ends see a reset link)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._loop = self._thread = self._server = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()  # RST, not a clean FIN: a cable pulled, a route gone
        self._writers.clear()
        for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk held until `delay_s` after it was read (in order)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        budget = asyncio.Semaphore(MAX_BUFFERED_BYTES // CHUNK)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.transport.abort()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                budget.release()
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                await budget.acquire()
                data = await reader.read(CHUNK)
                await queue.put((time.monotonic() + self.delay_s, data))
                if not data:  # EOF: close after the delayed bytes went out
                    await sender
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            if not sender.done():
                sender.cancel()
