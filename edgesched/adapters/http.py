"""HTTP server (aiohttp): /healthz, /metrics, /v1/status, /v1/tasks/{id}, the status page at
`/`, and routes other components add."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from edgesched.adapters.metrics import HTTP_AUTH_PATHS, Metrics
from edgesched.errors import HttpError

log = logging.getLogger("edgesched.http")

StatusProvider = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]
HealthCheck = Callable[[], str | None]  # a reason when unhealthy, None when fine
# `GET /v1/tasks/{id}`: the task's record, or None when unknown or no longer kept
TaskLookup = Callable[[str], Mapping[str, Any] | None]
TaskIdCheck = Callable[[str], bool]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSAL_LOG_INTERVAL_S = 60.0  # at most one "refused unauthenticated requests" line per minute
# How long a stopping server waits for handlers still running (aiohttp's default is 60 s).
# The node drains its tasks before the server stops, so by then every waiting handler has
# its reply and only has to write it.
SHUTDOWN_TIMEOUT_S = 1.0
# The status page (edgesched/web/status.html) is public: it holds no data, and fetches the
# API with the token the operator types into it (docs/security.md). Inline script and style
# only; it may talk to this origin and nothing else.
STATUS_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                   "form-action 'none'; frame-ancestors 'none'")
STATUS_PAGE_HEADERS = {
    "Content-Security-Policy": STATUS_PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def status_page() -> bytes:
    """The built-in status page, shipped as package data (edgesched/web/status.html)."""
    return resources.files("edgesched.web").joinpath("status.html").read_bytes()


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported")


def server_ssl_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `client_ca_file` every client must show a certificate
    signed by that CA (`CERT_REQUIRED`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
        if client_ca_file is not None:
            context.load_verify_locations(cafile=client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise HttpError(f"http.tls: cannot load the certificate, key or client CA: {exc}") from exc
    return context


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

    Everything it serves is given at construction (the composition root builds it last):

    - `status()`: the built-in part of `/v1/status`.
    - `routes=[web.post("/v1/tasks", handler), ...]`: extra aiohttp routes.
    - `status_providers={name: fn}`: `fn()` (sync or async) returns a JSON-able dict put
      under `name` in `/v1/status` (a provider named like a built-in key replaces it, e.g.
      `tasks`).
    - `health_checks={name: fn}`: `fn()` returns a reason string while unhealthy, else
      None; `/healthz` answers 503 with every reason.
    - `task_lookup(id)`: a recent task's record for `GET /v1/tasks/{id}` (404 when None);
      `valid_task_id(id)` is the intake's id rule (400 when False).

    `base_url` is known once started (with `port: 0` the OS picks the port).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        routes: Iterable[web.AbstractRouteDef] = (),
        status_providers: Mapping[str, StatusProvider] | None = None,
        health_checks: Mapping[str, HealthCheck] | None = None,
        task_lookup: TaskLookup | None = None,
        valid_task_id: TaskIdCheck | None = None,
        max_body_bytes: int = 1 << 20,
        token: str | None = None,
        metrics_auth: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._status = status
        self._providers = dict(status_providers or {})
        self._checks = dict(health_checks or {})
        self._token = token.encode("utf-8") if token else None
        self._ssl = ssl_context
        self._client_certs = (ssl_context is not None
                              and ssl_context.verify_mode == ssl.CERT_REQUIRED)
        self._task_lookup = task_lookup
        self._valid_task_id = valid_task_id or (lambda task_id: 0 < len(task_id) <= 128)
        # the status page holds no data: it asks for the token and sends it with its requests
        self._open_paths = frozenset({"/", "/healthz"} if metrics_auth
                                     else {"/", "/healthz", "/metrics"})
        self._refused = 0
        self._refusal_logged_at = -math.inf
        middlewares = [self._auth] if self._token is not None or self._client_certs else []
        self._app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/metrics", self._metrics_handler)
        self._app.router.add_get("/v1/status", self._status_handler)
        self._app.router.add_get("/", self._page_handler)
        if task_lookup is not None:
            self._app.router.add_get("/v1/tasks/{id}", self._task_handler)
        self._app.router.add_routes(list(routes))
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def base_url(self) -> str:
        host = self._host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{host}:{self.bound_port or self._port}"

    async def __aenter__(self) -> HttpServer:
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True,
                           ssl_context=self._ssl)
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
        auth = ", ".join(name for name, on in (("bearer token", self._token is not None),
                                               ("client certificates", self._client_certs))
                         if on) or "none"
        log.info("HTTP API listening on %s (authentication: %s)", self.base_url, auth)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- authentication -----------------------------------------------------------------
    def _authenticated(self, request: web.Request) -> bool:
        # CERT_REQUIRED: the handshake already refused clients without a valid certificate
        transport = request.transport
        if self._client_certs and transport is not None and transport.get_extra_info("peercert"):
            return True
        if self._token is None:
            return False
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode("utf-8", "replace"), self._token)

    @web.middleware
    async def _auth(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path in self._open_paths or self._authenticated(request):
            return await handler(request)
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if canonical == "/v1/tasks/{id}":
            canonical = "/v1/tasks"  # one label for the task routes
        self._metrics.http_unauthorized.labels(
            path=canonical if canonical in HTTP_AUTH_PATHS else "other").inc()
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("refused %d HTTP request(s) without a valid bearer token (last: %s %s "
                        "from %s)", self._refused, request.method, canonical or "unknown path",
                        request.remote)
            self._refused, self._refusal_logged_at = 0, now
        response = json_response(
            {"error": "unauthorized",
             "detail": "a bearer token is required: send 'Authorization: Bearer <token>' with "
                       "the node's http.token_file"},
            status=401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

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

    async def _page_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=status_page(), content_type="text/html", charset="utf-8",
                            headers=STATUS_PAGE_HEADERS)

    async def _task_handler(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        lookups = self._metrics.task_lookups
        if not self._valid_task_id(task_id):
            lookups.labels(result="bad_id").inc()
            return json_response(
                {"error": "bad_id", "detail": "a task id is a printable string of 1..128 "
                 "characters (the id given at submission)"}, status=400)
        assert self._task_lookup is not None
        doc = self._task_lookup(task_id)
        if doc is None:
            lookups.labels(result="unknown").inc()
            return json_response(
                {"error": "unknown_task", "id": task_id,
                 "detail": "no finished task with this id is kept on this node: it never "
                 "came here, is still running, or was evicted from the recent-task store "
                 "(http.recent_tasks_bytes)"}, status=404)
        lookups.labels(result="found").inc()
        return json_response(doc)
