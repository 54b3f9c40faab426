"""HTTP client to the cloud tier: `POST {cloud.url}/v1/tasks` over one pooled aiohttp session."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from edgesched import __version__
from edgesched.config import CloudSettings
from edgesched.errors import HttpError

log = logging.getLogger("edgesched.cloud")

MAX_REPLY_BYTES = 64 << 20


class CloudClient:
    """Sends submit bodies to the cloud tier and returns its reply document.

    One `ClientSession` for the node's lifetime keeps connections alive and pooled (at most
    `cloud.max_connections`); every foreign error becomes `HttpError` here.
    """

    def __init__(self, settings: CloudSettings) -> None:
        if settings.url is None:
            raise ValueError("cloud.url is not set")
        self.url = f"{settings.url}/v1/tasks"
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CloudClient:
        headers = {"User-Agent": f"edgesched/{__version__}", "Content-Type": "application/json"}
        token = self._settings.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._settings.max_connections,
                                           keepalive_timeout=60.0),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def submit(self, body: bytes, *, timeout_s: float | None = None) -> dict[str, Any]:
        """POST one encoded submit body; the reply document (any status) or HttpError."""
        if self._session is None:
            raise HttpError("the cloud client is not open")
        limit = min(timeout_s, self._settings.timeout_s) if timeout_s else None
        try:
            async with self._session.post(
                self.url, data=body,
                timeout=aiohttp.ClientTimeout(total=limit) if limit else None,
            ) as resp:
                raw = await resp.content.read(MAX_REPLY_BYTES + 1)
                return _reply_document(resp.status, raw, self.url)
        except TimeoutError as exc:
            raise HttpError(f"cloud {self.url} did not answer within {limit}s") from exc
        except aiohttp.ClientError as exc:
            raise HttpError(f"cloud {self.url}: {exc.__class__.__name__}: {exc}") from exc


def _reply_document(status: int, raw: bytes, url: str) -> dict[str, Any]:
    if len(raw) > MAX_REPLY_BYTES:
        raise HttpError(f"cloud {url} answered more than {MAX_REPLY_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict) and "status" in doc and status in (200, 400, 413):
        return doc  # a reply, possibly `rejected` (400/413 carry one too)
    snippet = raw[:200].decode("utf-8", "replace")
    raise HttpError(f"cloud {url} answered HTTP {status}: {snippet}")
