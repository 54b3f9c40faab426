"""`edgesched status` and `edgesched healthcheck`: small HTTP clients of a node's API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import aiohttp

from edgesched.config import config_path_from_env, load_settings
from edgesched.errors import HttpError

EXIT_OK = 0
EXIT_UNHEALTHY = 1


def base_url(args: argparse.Namespace) -> str:
    """`--url`, else the HTTP address of the config (`--config`/$EDGESCHED_CONFIG/defaults)."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    settings = load_settings(config_path_from_env(getattr(args, "config", None)))
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}"


async def fetch_json(url: str, timeout_s: float) -> tuple[int, Any]:
    """GET `url` -> (status, parsed JSON body); raises `HttpError` when unreachable."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
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
        url = base_url(args) + "/healthz"
        try:
            status, body = await fetch_json(url, args.timeout)
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
    """Print a node's `/v1/status` as tables (raw JSON when stdout is not a terminal)."""

    async def show() -> int:
        url = base_url(args) + "/v1/status"
        status, body = await fetch_json(url, args.timeout)
        if status != 200 or not isinstance(body, dict):
            raise HttpError(f"{url} answered HTTP {status}")
        if not sys.stdout.isatty():
            print(json.dumps(body, indent=2))
        else:
            render_status(body)
        return EXIT_OK

    return await _until_stopped(show(), shutdown_trigger)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_status(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    mqtt = doc.get("mqtt", {})
    tasks = doc.get("tasks", {})
    console.print(
        f"[bold]{doc.get('node_id')}[/bold] role={doc.get('role')} "
        f"incarnation={doc.get('incarnation')} mqtt="
        f"{'connected' if mqtt.get('connected') else '[red]disconnected[/red]'} "
        f"tasks running={tasks.get('running')} queued={tasks.get('queued')}"
    )
    table = Table(title="neighbours")
    for col in ("node", "status", "last seen s", "running", "queued", "slots", "cpu", "battery"):
        table.add_column(col)
    for n in doc.get("neighbours", []):
        table.add_row(n.get("node_id"), n.get("status"), _fmt(n.get("last_seen_s")),
                      _fmt(n.get("running")), _fmt(n.get("queued")), _fmt(n.get("slots")),
                      _fmt(n.get("cpu_util")), _fmt(n.get("battery")))
    console.print(table)
    devices = Table(title=f"devices ({doc.get('devices_total', len(doc.get('devices', [])))})")
    for col in ("device", "last seen s", "values"):
        devices.add_column(col)
    for d in doc.get("devices", [])[:50]:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(d.get("values", {}).items()))
        devices.add_row(d.get("device_id"), _fmt(d.get("last_seen_s")), values)
    console.print(devices)
