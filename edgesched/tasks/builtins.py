"""The four built-in task types (contract §2): validation and deterministic work functions.

Validation runs on the event loop before anything is queued, so a bad input is rejected at
once; the work functions are plain top-level functions so the process pool can pickle them.
A pool worker imports this module to run them: it imports nothing but the stdlib at its top
(numpy only inside `matmul_trace`, asyncio inside `run_sleep`), see `tasks/worker.py`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

from edgesched.errors import InvalidTaskError

MAX_HASH_ROUNDS = 10_000_000
MAX_MATMUL_N = 2048
MAX_SLEEP_S = 60.0
MAX_HASH_DATA_CHARS = 1 << 20


def _fields(value: Any, task_type: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The input as an object with exactly `required` keys, else a clear rejection."""
    if not isinstance(value, dict):
        raise InvalidTaskError(f"{task_type}: input must be a JSON object, got {_kind(value)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise InvalidTaskError(f"{task_type}: input is missing {', '.join(missing)}")
    extra = sorted(str(key) for key in value if key not in required)
    if extra:
        raise InvalidTaskError(f"{task_type}: unknown input field(s) {', '.join(extra)}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _int(task_type: str, name: str, value: Any, low: int, high: int | None) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTaskError(f"{task_type}: {name} must be an integer, got {_kind(value)}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidTaskError(f"{task_type}: {name} must be within {bound}, got {value}")
    return value


def _float(task_type: str, name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTaskError(f"{task_type}: {name} must be a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidTaskError(f"{task_type}: {name} must be finite, got {value!r}")
    if not low <= number <= high:
        raise InvalidTaskError(f"{task_type}: {name} must be within {low}..{high}, got {value}")
    return number


def validate_echo(value: Any) -> Any:
    return value


def validate_hash(value: Any) -> dict[str, Any]:
    doc = _fields(value, "hash", ("data", "rounds"))
    data = doc["data"]
    if not isinstance(data, str):
        raise InvalidTaskError(f"hash: data must be a string, got {_kind(data)}")
    if len(data) > MAX_HASH_DATA_CHARS:
        raise InvalidTaskError(f"hash: data is longer than {MAX_HASH_DATA_CHARS} characters")
    rounds = _int("hash", "rounds", doc["rounds"], 1, MAX_HASH_ROUNDS)
    return {"data": data, "rounds": rounds}


def validate_matmul(value: Any) -> dict[str, Any]:
    doc = _fields(value, "matmul", ("n", "seed"))
    n = _int("matmul", "n", doc["n"], 1, MAX_MATMUL_N)
    seed = _int("matmul", "seed", doc["seed"], 0, None)
    return {"n": n, "seed": seed}


def validate_sleep(value: Any) -> dict[str, Any]:
    doc = _fields(value, "sleep", ("seconds",))
    return {"seconds": _float("sleep", "seconds", doc["seconds"], 0.0, MAX_SLEEP_S)}


def run_echo(value: Any) -> Any:
    return value


def hash_digest(data: str, rounds: int) -> str:
    """SHA-256 of `data` (UTF-8), then of the previous 32-byte digest, `rounds` times in all."""
    digest = hashlib.sha256(data.encode("utf-8")).digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def run_hash(value: dict[str, Any]) -> dict[str, Any]:
    return {"digest": hash_digest(value["data"], value["rounds"])}


def matmul_trace(n: int, seed: int) -> float:
    """Trace of A·B, A then B drawn from `default_rng(seed).random((n, n))`."""
    import numpy as np  # here, not at the top: ~15 MB in every process that never multiplies

    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    b = rng.random((n, n))
    return float(np.trace(a @ b))


def run_matmul(value: dict[str, Any]) -> dict[str, Any]:
    return {"trace": matmul_trace(value["n"], value["seed"])}


async def run_sleep(value: dict[str, Any]) -> dict[str, Any]:
    import asyncio  # already loaded on the event loop; a pool worker never imports it

    await asyncio.sleep(value["seconds"])
    return {"slept": value["seconds"]}


VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "echo": validate_echo,
    "hash": validate_hash,
    "matmul": validate_matmul,
    "sleep": validate_sleep,
}

# Synchronous work functions (picklable, safe in a worker process); sleep is async only.
SYNC_RUNNERS: dict[str, Callable[[Any], Any]] = {
    "echo": run_echo,
    "hash": run_hash,
    "matmul": run_matmul,
}


def run_builtin_sync(name: str, value: Any) -> Any:
    """Entry point for a process-pool worker: run the built-in `name` on validated input."""
    return SYNC_RUNNERS[name](value)


def work_units(name: str, value: Any) -> float | None:
    """How much work a validated input asks for, in the unit the exec-time model is linear in.

    The estimators model execution time as a + b·x; for these built-ins the work is not the
    input's size but `rounds` (hash), n³/1000 (matmul) or the seconds themselves (sleep).
    None = use the input size in bytes.
    """
    if name == "hash":
        return float(value["rounds"])
    if name == "matmul":
        return float(value["n"]) ** 3 / 1000.0
    if name == "sleep":
        return float(value["seconds"]) * 1e6
    return None


def exact_seconds(name: str, value: Any) -> float | None:
    """The execution time when it is known from the input alone (sleep), else None."""
    return float(value["seconds"]) if name == "sleep" else None
