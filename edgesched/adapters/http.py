"""HTTP server (aiohttp): /healthz, /metrics, /v1/status and routes other components add."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from edgesched.adapters.metrics import Metrics
from edgesched.errors import HttpError

log = logging.getLogger("edgesched.http")

StatusProvider = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]
HealthCheck = Callable[[], str | None]  # a reason when unhealthy, None when fine

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _json_default(value: object) -> object:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: replace them with null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(body: Any, *, status: int = 200) -> web.Response:
    text = json.dumps(_finite(body), default=_json_default, allow_nan=False)
    return web.json_response(text=text, status=status)


class HttpServer:
    """The node's HTTP API, as an async context manager (started on enter, stopped on exit).

    Extension points (call before entering):

    - `add_routes([web.post("/v1/tasks", handler), ...])`: extra aiohttp routes.
    - `register_status_provider(name, fn)`: `fn()` (sync or async) returns a JSON-able dict
      put under `name` in `/v1/status` (a provider named like a built-in key replaces it, e.g.
      `tasks`).
    - `register_health_check(name, fn)`: `fn()` returns a reason string while unhealthy, else
      None; `/healthz` answers 503 with every reason.

    `base_url` is known once started (with `port: 0` the OS picks the port).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        max_body_bytes: int = 1 << 20,
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._status = status
        self._providers: dict[str, StatusProvider] = {}
        self._checks: dict[str, HealthCheck] = {}
        self._app = web.Application(client_max_size=max_body_bytes)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/metrics", self._metrics_handler)
        self._app.router.add_get("/v1/status", self._status_handler)
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        if self._runner is not None:
            raise RuntimeError("add routes before the HTTP server starts")
        self._app.router.add_routes(list(routes))

    def register_status_provider(self, name: str, fn: StatusProvider) -> None:
        self._providers[name] = fn

    def register_health_check(self, name: str, fn: HealthCheck) -> None:
        self._checks[name] = fn

    @property
    def base_url(self) -> str:
        host = self._host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.bound_port or self._port}"

    async def __aenter__(self) -> HttpServer:
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise HttpError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}; "
                "set http.port to a free port (0 = any)"
            ) from exc
        self._runner = runner
        addresses = runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else self._port
        log.info("HTTP API listening on %s", self.base_url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- handlers -----------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        reasons = []
        for name, check in self._checks.items():
            try:
                reason = check()
            except Exception as exc:  # a broken check is itself a health problem
                reason = f"{name} check failed: {exc}"
            if reason:
                reasons.append(reason)
        if reasons:
            return json_response({"status": "unhealthy", "reasons": reasons}, status=503)
        return json_response({"status": "ok"})

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def _status_handler(self, request: web.Request) -> web.Response:
        doc = self._status()
        for name, provider in self._providers.items():
            try:
                section = provider()
                if asyncio.iscoroutine(section) or isinstance(section, Awaitable):
                    section = await section
            except Exception as exc:
                log.warning("status provider %s failed: %s", name, exc)
                section = {"error": str(exc)}
            doc[name] = section
        return json_response(doc)
