"""`edgesched status` and `edgesched healthcheck`: small HTTP clients of a node's API."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from edgesched.config import Settings, config_path_from_env, load_settings
from edgesched.errors import ConfigError, HttpError
from edgesched.node.statusview import render_status, render_task

__all__ = ["healthcheck_command", "render_status", "render_task", "status_command"]

log = logging.getLogger("edgesched.client")

EXIT_OK = 0
EXIT_UNHEALTHY = 1


def base_url(args: argparse.Namespace) -> str:
    """`--url`, else the HTTP address of the config (`--config`/$EDGESCHED_CONFIG/defaults)."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    return _config_url(load_settings(config_path_from_env(getattr(args, "config", None))))


def _config_url(settings: Settings) -> str:
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{settings.http.scheme}://{host}:{settings.http.port}"


@dataclass(frozen=True)
class Target:
    """Where a node's API is and how to authenticate to it."""

    url: str
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None


def target(args: argparse.Namespace) -> Target:
    """`--url` (else the config's address), `--token-file` (else the config's http token),
    `--ca-file` (else, for the config's own https address, its certificate) and a client
    certificate (`--cert-file`/`--key-file`) for a node that requires one."""
    settings: Settings | None = None
    try:
        settings = load_settings(config_path_from_env(getattr(args, "config", None)))
    except ConfigError:
        if not getattr(args, "url", None):
            raise
        log.debug("no usable config; going on without its token", exc_info=True)
    url = str(args.url).rstrip("/") if getattr(args, "url", None) else None
    if url is None:
        assert settings is not None
        url = _config_url(settings)
    token_file = getattr(args, "token_file", None)
    if token_file:
        try:
            token: str | None = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HttpError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    else:
        secret = settings.http.token if settings is not None else None
        token = secret.get_secret_value() if secret is not None else None
    context = None
    if url.startswith("https://"):
        ca_file = getattr(args, "ca_file", None)
        if ca_file is None and settings is not None and not getattr(args, "url", None):
            ca_file = settings.http.tls.cert_file  # self-signed: the node's own certificate
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            cert_file = getattr(args, "cert_file", None)
            if cert_file:
                context.load_cert_chain(cert_file, getattr(args, "key_file", None))
        except (ssl.SSLError, OSError) as exc:
            raise HttpError(f"cannot load the TLS files: {exc}") from None
    return Target(url=url, token=token or None, ssl_context=context)


async def fetch_json(url: str, timeout_s: float, *, token: str | None = None,
                     ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """GET `url` -> (status, parsed JSON body); raises `HttpError` when unreachable."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers,
                                         connector=connector) as session, \
                session.get(url) as resp:
            text = await resp.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
            return resp.status, body
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise HttpError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc


async def _until_stopped(work: Awaitable[int], shutdown_trigger: Awaitable[None]) -> int:
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(shutdown_trigger)
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        return 130
    finally:
        for t in (task, stop):
            t.cancel()
        await asyncio.gather(task, stop, return_exceptions=True)


async def healthcheck_command(args: argparse.Namespace, shutdown_trigger: Awaitable[None]) -> int:
    """Exit 0 when `/healthz` answers 200, else 1 with the reason on stderr."""

    async def check() -> int:
        try:
            where = target(args)
            url = where.url + "/healthz"
            status, body = await fetch_json(url, args.timeout, ssl_context=where.ssl_context)
        except HttpError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return EXIT_UNHEALTHY
        if status == 200:
            print("ok")
            return EXIT_OK
        reasons = body.get("reasons") if isinstance(body, dict) else None
        print(f"unhealthy (HTTP {status}): {'; '.join(reasons or [str(body)])}", file=sys.stderr)
        return EXIT_UNHEALTHY

    return await _until_stopped(check(), shutdown_trigger)


async def status_command(args: argparse.Namespace, shutdown_trigger: Awaitable[None]) -> int:
    """Print a node's `/v1/status` (or, with `--task ID`, that task's `/v1/tasks/{id}`) as
    tables; raw JSON with `--json` or when stdout is not a terminal."""
    task_id = getattr(args, "task", None)

    async def show() -> int:
        where = target(args)
        url = where.url + ("/v1/status" if task_id is None
                           else "/v1/tasks/" + urllib.parse.quote(task_id, safe=""))
        status, body = await fetch_json(url, args.timeout, token=where.token,
                                        ssl_context=where.ssl_context)
        if status == 401:
            raise HttpError(f"{url} answered HTTP 401: the node requires its bearer token; "
                            "pass --token-file FILE (or --config with its http.token_file)"
                            if where.token is None else
                            f"{url} answered HTTP 401: the token was refused (wrong token file)")
        if task_id is not None and status in (400, 404) and isinstance(body, dict):
            print(f"task {task_id!r}: {body.get('detail') or body.get('error')}",
                  file=sys.stderr)
            return EXIT_UNHEALTHY
        if status != 200 or not isinstance(body, dict):
            raise HttpError(f"{url} answered HTTP {status}")
        if getattr(args, "json", False) or not sys.stdout.isatty():
            print(json.dumps(body, indent=2))
        elif task_id is not None:
            render_task(body)
        else:
            render_status(body)
        return EXIT_OK

    return await _until_stopped(show(), shutdown_trigger)
