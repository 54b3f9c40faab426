"""An in-process MQTT 3.1.1 broker (amqtt) on a free loopback port, for `edgesched demo`.

The demo runs a whole cluster on one machine without asking the user to install a broker:
`EmbeddedBroker` starts amqtt inside the demo's event loop; nodes and the demo's device fleet
connect to it with MQTT 3.1.1 through the ordinary MQTT adapter.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from edgesched.errors import MqttError, UsageError

log = logging.getLogger("edgesched.adapters.embedded_broker")

# Only anonymous auth: the embedded broker listens on loopback for a single demo run.
_PLUGINS: dict[str, Any] = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
}


# amqtt and what it pulls in (typer, psutil, transitions, websockets, ...) are no dependency of
# the daemon: only the demo's broker needs them, as the `demo` extra.
MISSING_AMQTT = (
    "the demo's embedded MQTT broker needs amqtt, which is not installed: "
    "pip install 'edgesched[demo]' (or `make demo`), or give --broker HOST:PORT of an MQTT v5 "
    "broker you run"
)


class _AmqttTeardownNoise(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for amqtt's own tasks: amqtt
    0.11/0.12 fails inside its handlers when a client's connection closes under it (a killed
    demo node, the demo's end). Every node reconnects and nothing is lost (the summary counts
    it), so a traceback on the demo's console only alarms its reader."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "amqtt" not in record.getMessage()


_NOISE = _AmqttTeardownNoise()


def _quiet_amqtt(on: bool) -> None:
    """amqtt's loggers show only CRITICAL while the embedded broker runs (its ERRORs are
    the same connection-teardown failures); edgesched's own warnings still show."""
    asyncio_log = logging.getLogger("asyncio")
    if on:
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        asyncio_log.addFilter(_NOISE)
    else:
        logging.getLogger("amqtt").setLevel(logging.NOTSET)
        asyncio_log.removeFilter(_NOISE)


def require_amqtt() -> None:
    """UsageError naming the `demo` extra when amqtt cannot be imported."""
    try:
        import amqtt  # noqa: F401  (the package only: amqtt.broker is slow to import)
    except ImportError:
        raise UsageError(MISSING_AMQTT) from None


class EmbeddedBroker:
    """amqtt on `host`, port chosen by the kernel (race-free), for the lifetime of the context."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._broker: Any = None

    async def __aenter__(self) -> EmbeddedBroker:
        require_amqtt()
        from amqtt.broker import Broker  # imported late: amqtt is slow to import

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:0"}},
            "plugins": dict(_PLUGINS),
        }
        try:
            self._broker = Broker(config)
            await self._broker.start()
        except Exception as exc:
            raise MqttError(f"cannot start the embedded MQTT broker on {self.host}: {exc}") from exc
        self.port = self._bound_port()
        _quiet_amqtt(True)
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)
        return self

    def _bound_port(self) -> int:
        # amqtt has no public accessor for the bound address; its listener keeps the
        # asyncio.Server, whose socket knows the port the kernel picked for ":0".
        server = self._broker._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await asyncio.wait_for(broker.shutdown(), timeout=5.0)
        except Exception as exc:  # a broker that will not stop must not hang the demo's exit
            log.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
        finally:
            _quiet_amqtt(False)
        log.info("embedded MQTT broker stopped")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port
