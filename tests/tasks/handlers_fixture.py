"""Python handlers the registry tests load by `python:module:function`."""

from __future__ import annotations

import asyncio
from typing import Any

from edgesched.errors import InvalidTaskError


def double(value: Any) -> Any:
    return {"doubled": value["x"] * 2}


async def async_double(value: Any) -> Any:
    await asyncio.sleep(0)
    return {"doubled": value["x"] * 2}


def boom(value: Any) -> Any:
    raise RuntimeError("boom")


def picky(value: Any) -> Any:
    raise InvalidTaskError("picky: x must be odd")


def not_json(value: Any) -> Any:
    return {"x": {1, 2}}


def die(value: Any) -> Any:
    import os

    os._exit(3)  # a worker that crashes hard (as on a segfault or an OOM kill)
