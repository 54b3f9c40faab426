"""HTTP client to the cloud tier: `POST {cloud.url}/v1/tasks` over one pooled aiohttp session."""

from __future__ import annotations

import json
import logging
import math
import re
import ssl
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from edgesched import __version__
from edgesched.config import MASK, CloudSettings, mask_url
from edgesched.errors import HttpError, HttpTimeoutError, UnauthorizedError

log = logging.getLogger("edgesched.cloud")

MAX_REPLY_BYTES = 64 << 20
AUTH_LOG_INTERVAL_S = 60.0  # at most one "the cloud refused our token" line per minute
_CONTENT_TYPE_RE = re.compile(r"[^A-Za-z0-9/+.;=_ -]")
# The cloud tier's load, in every reply to POST /v1/tasks (contract §6): an edge node models
# the cloud's queue from it instead of assuming an unbounded tier (issue 20).
LOAD_HEADER = "X-Edgesched-Load"
_LOAD_RE = re.compile(r"slots=(\d{1,7}); running=(\d{1,7}); queued=(\d{1,9}); "
                      r"est_wait_s=(\d{1,7}(?:\.\d{1,6})?)")


def format_load(running: int, queued: int, slots: int, est_wait_s: float) -> str:
    """The `X-Edgesched-Load` value of a cloud node's reply."""
    wait = min(max(0.0, est_wait_s), 1e6) if math.isfinite(est_wait_s) else 1e6
    return f"slots={slots}; running={running}; queued={queued}; est_wait_s={wait:.3f}"


def parse_load(text: str | None) -> tuple[int, int, int, float] | None:
    """(running, queued, slots, est_wait_s) from an `X-Edgesched-Load` value; None when
    absent or malformed (a cloud node of an older version sends none)."""
    match = _LOAD_RE.fullmatch(text.strip()) if text else None
    if match is None or int(match[1]) < 1:
        return None
    return int(match[2]), int(match[3]), int(match[1]), float(match[4])


class CloudClient:
    """Sends submit bodies to the cloud tier and returns its reply document.

    One `ClientSession` for the node's lifetime keeps connections alive and pooled (at most
    `cloud.max_connections`); every foreign error becomes `HttpError` here, a refused token
    (HTTP 401/403) `UnauthorizedError`. Messages show the URL with its password masked and
    never the body of an upstream error (it may echo what we sent).
    """

    def __init__(self, settings: CloudSettings, *, origin: str | None = None) -> None:
        if settings.url is None:
            raise ValueError("cloud.url is not set")
        self.url = f"{settings.url}/v1/tasks"
        self.probe_url = f"{settings.url}/v1/probe"
        self.shown_url = mask_url(self.url)
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._secrets = _secret_parts(settings)
        self._auth_logged_at = -math.inf
        self._origin = origin  # this edge's node id, sent as X-Edgesched-Origin
        # The cloud's latest load (running, queued, slots, est_wait_s) from a reply's
        # X-Edgesched-Load header, and when it arrived (time.monotonic()).
        self.load: tuple[int, int, int, float] | None = None
        self.load_at = -math.inf

    async def __aenter__(self) -> CloudClient:
        headers = {"User-Agent": f"edgesched/{__version__}", "Content-Type": "application/json"}
        token = self._settings.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        if self._origin is not None:
            # the cloud tier counts the task as this edge's, not as a submission of its own
            headers["X-Edgesched-Origin"] = self._origin
        ssl_context: ssl.SSLContext | bool = True  # verify https against the system CAs
        if self._settings.ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(self._settings.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._settings.max_connections,
                                           keepalive_timeout=60.0, ssl=ssl_context),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    async def submit(self, body: bytes, *, timeout_s: float | None = None) -> dict[str, Any]:
        """POST one encoded submit body; the reply document (any status) or HttpError
        (HttpTimeoutError when no answer came within `timeout_s` / cloud.timeout_s)."""
        limit = min(timeout_s, self._settings.timeout_s) if timeout_s else None
        status, raw, content_type = await self._exchange(
            "POST", self.url, timeout_s=limit, read_limit=MAX_REPLY_BYTES + 1, what="",
            data=body)
        return _reply_document(status, raw, self.shown_url, content_type)

    async def cancel(self, task_id: str, *, sent_at_ms: int | None,
                     timeout_s: float = 2.0) -> str:
        """`DELETE {cloud.url}/v1/tasks/{id}?sent_at=MS`: drop the attempt sent at `sent_at_ms`
        if it has not started; the cloud's `result` (dropped, running, unknown), or HttpError."""
        params = {} if sent_at_ms is None else {"sent_at": str(sent_at_ms)}
        status, raw, _ = await self._exchange(
            "DELETE", f"{self.url}/{quote(task_id, safe='')}", timeout_s=timeout_s,
            read_limit=4096, what=" a cancel", params=params)
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if status != 200 or not isinstance(doc, dict) or not isinstance(
                doc.get("result"), str):
            raise HttpError(f"cloud {self.shown_url} answered a cancel with HTTP {status}",
                            reason="http_status")
        return str(doc["result"])[:32]

    async def probe(self, payload: bytes = b"", *, timeout_s: float) -> float:
        """One uplink probe request (`GET {cloud.url}/v1/probe`, or a `POST` carrying
        `payload`): the seconds it took, or HttpError when the answer is not HTTP 204."""
        upload = ({"data": payload, "headers": {"Content-Type": "application/octet-stream"}}
                  if payload else {})
        started = time.monotonic()
        status, _, _ = await self._exchange("POST" if payload else "GET", self.probe_url,
                                            timeout_s=timeout_s, read_limit=1024,
                                            what=" a probe", **upload)
        if status != 204:
            raise HttpError(f"cloud {mask_url(self.probe_url)} answered a probe with HTTP "
                            f"{status} (an edgesched cloud node answers 204)",
                            reason="http_status")
        return time.monotonic() - started

    async def _exchange(self, method: str, url: str, *, timeout_s: float | None,
                        read_limit: int, what: str, **request: Any) -> tuple[int, bytes, str]:
        """One request to the cloud: (status, at most `read_limit` body bytes, content type).

        The one place foreign errors become ours: a refused token is logged (and raised as
        UnauthorizedError), a timeout is HttpTimeoutError, anything else HttpError."""
        if self._session is None:
            raise HttpError("the cloud client is not open")
        try:
            async with self._session.request(
                method, url, timeout=aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None,
                **request,
            ) as resp:
                if resp.status in (401, 403):
                    self._refused(resp.status)
                raw = await resp.content.read(read_limit)
                load = parse_load(resp.headers.get(LOAD_HEADER))
                if load is not None:
                    self.load, self.load_at = load, time.monotonic()
                return resp.status, raw, resp.headers.get("Content-Type", "")
        except TimeoutError as exc:
            raise HttpTimeoutError(
                f"cloud {self.shown_url} did not answer{what} within {timeout_s}s") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            detail = self._scrub(f"{exc.__class__.__name__}: {exc}")
            raise HttpError(f"cloud {self.shown_url}: {detail}", reason="unreachable") from exc

    def _refused(self, status: int) -> None:
        if self._settings.token is None:
            why = "we sent no token: set cloud.token_file to the cloud node's http.token_file"
        else:
            why = ("cloud.token_file does not hold the token of the cloud node's "
                   "http.token_file")
        now = time.monotonic()
        if now - self._auth_logged_at >= AUTH_LOG_INTERVAL_S:
            self._auth_logged_at = now
            log.warning("the cloud tier %s refused our token (HTTP %d): %s; cloud attempts "
                        "fail over to the next candidate until it is fixed",
                        self.shown_url, status, why)
        raise UnauthorizedError(f"cloud {self.shown_url} refused our token (HTTP {status}): "
                                f"{why}")


def _secret_parts(settings: CloudSettings) -> list[str]:
    """Strings that must never appear in a message: the URL's password, the token."""
    parts = []
    url = settings.url or ""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        parts += [password, unquote(password)]
    if settings.token is not None and settings.token.get_secret_value():
        parts.append(settings.token.get_secret_value())
    return sorted({p for p in parts if p}, key=len, reverse=True)


def _reply_document(status: int, raw: bytes, url: str, content_type: str = "") -> dict[str, Any]:
    """The task reply in an answer, or HttpError saying what came back (never the body: an
    upstream error page may echo our request, token included)."""
    if len(raw) > MAX_REPLY_BYTES:
        raise HttpError(f"cloud {url} answered more than {MAX_REPLY_BYTES} bytes",
                        reason="bad_reply")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict) and "status" in doc and status in (200, 400, 413):
        return doc  # a reply, possibly `rejected` (400/413 carry one too)
    kind = _CONTENT_TYPE_RE.sub("", content_type)[:64] or "no content type"
    what = "not a task reply" if status == 200 else "no task reply"
    raise HttpError(f"cloud {url} answered HTTP {status}, {len(raw)} bytes ({kind}): {what}",
                    reason="bad_reply" if status == 200 else "http_status")
