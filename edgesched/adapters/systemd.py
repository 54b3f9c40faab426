"""systemd notify protocol (READY/WATCHDOG/STOPPING) over $NOTIFY_SOCKET, stdlib sockets only."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from edgesched.config import ProcessEnvironment

log = logging.getLogger("edgesched.systemd")


class Notifier:
    """Writes sd_notify datagrams; a no-op when the process was not started by systemd.

    The watchdog loop (`edgesched.systemd.watchdog_loop`) runs on the event loop itself, so a
    blocked loop stops the pings and systemd restarts the service.
    """

    def __init__(self, env: ProcessEnvironment) -> None:
        self._address = self._socket_address(env.notify_socket)
        self._watchdog_usec = env.watchdog_usec if self._watchdog_applies(env) else None
        self._sock: socket.socket | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @staticmethod
    def _socket_address(path: str | None) -> str | None:
        if not path:
            return None
        if path.startswith("@"):  # abstract namespace socket
            return "\0" + path[1:]
        return path

    @staticmethod
    def _watchdog_applies(env: ProcessEnvironment) -> bool:
        if not env.watchdog_usec or env.watchdog_usec <= 0:
            return False
        return env.watchdog_pid is None or env.watchdog_pid == os.getpid()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog timeout, as sd_watchdog_enabled(3) recommends; None = off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, message: str) -> bool:
        """Send one notification; failures are logged, never raised (systemd is optional)."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %r to %s failed: %s", message, self._address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def __aenter__(self) -> Notifier:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        interval = self.watchdog_interval_s
        if self.enabled and interval is not None:
            log.info("systemd watchdog enabled: pinging every %.2fs", interval)
            self._tasks.append(self._tg.create_task(
                self._watchdog_loop(interval), name="edgesched.systemd.watchdog_loop"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        tg, self._tg, self._tasks = self._tg, None, []
        if tg is not None:
            await tg.__aexit__(None, None, None)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
