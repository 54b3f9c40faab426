"""A task handler that blocks the daemon's event loop on purpose (stall guard tests only).

It is `async`, so the daemon awaits it on the event loop; the `time.sleep` inside then holds
the loop, exactly like a badly written handler or a blocking library call would.
"""

from __future__ import annotations

import time
from typing import Any


async def block(value: Any) -> dict[str, float]:
    seconds = float(value["seconds"]) if isinstance(value, dict) else 0.0
    time.sleep(seconds)  # noqa: ASYNC251 - the point: a blocking call on the event loop
    return {"blocked": seconds}
