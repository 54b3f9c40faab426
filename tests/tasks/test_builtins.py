"""Built-in task types: exact semantics of contract §2 and strict input validation."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from edgesched.errors import InvalidTaskError
from edgesched.tasks import builtins


def reference_digest(data: str, rounds: int) -> str:
    digest = hashlib.sha256(data.encode()).digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@pytest.mark.parametrize("rounds", [1, 2, 7, 1000])
def test_hash_applies_sha256_rounds_times(rounds: int) -> None:
    value = builtins.validate_hash({"data": "héllo", "rounds": rounds})
    assert builtins.run_hash(value) == {"digest": reference_digest("héllo", rounds)}


def test_hash_one_round_is_plain_sha256() -> None:
    assert builtins.hash_digest("abc", 1) == hashlib.sha256(b"abc").hexdigest()


def test_matmul_trace_matches_numpy() -> None:
    rng = np.random.default_rng(42)
    a, b = rng.random((17, 17)), rng.random((17, 17))
    result = builtins.run_matmul(builtins.validate_matmul({"n": 17, "seed": 42}))
    assert result["trace"] == pytest.approx(float(np.trace(a @ b)), rel=1e-12)
    assert isinstance(result["trace"], float)


async def test_sleep_returns_seconds() -> None:
    assert await builtins.run_sleep(builtins.validate_sleep({"seconds": 0.01})) == {
        "slept": 0.01
    }


def test_echo_returns_input() -> None:
    doc = {"a": [1, None, "x"]}
    assert builtins.run_echo(builtins.validate_echo(doc)) is doc


@pytest.mark.parametrize(
    ("validator", "value", "fragment"),
    [
        (builtins.validate_hash, {"data": "x", "rounds": True}, "rounds must be an integer"),
        (builtins.validate_hash, {"data": "x", "rounds": 0}, "within 1..10000000"),
        (builtins.validate_hash, {"data": "x", "rounds": 10_000_001}, "within"),
        (builtins.validate_hash, {"data": "x", "rounds": 2.0}, "rounds must be an integer"),
        (builtins.validate_hash, {"data": 5, "rounds": 1}, "data must be a string"),
        (builtins.validate_hash, {"rounds": 1}, "missing data"),
        (builtins.validate_hash, {"data": "x", "rounds": 1, "z": 1}, "unknown input field"),
        (builtins.validate_hash, [1, 2], "must be a JSON object"),
        (builtins.validate_matmul, {"n": 2049, "seed": 1}, "n must be within 1..2048"),
        (builtins.validate_matmul, {"n": 0, "seed": 1}, "n must be within"),
        (builtins.validate_matmul, {"n": 4, "seed": -1}, "seed must be within"),
        (builtins.validate_matmul, {"n": "4", "seed": 1}, "n must be an integer"),
        (builtins.validate_matmul, {"n": 4, "seed": False}, "seed must be an integer"),
        (builtins.validate_sleep, {"seconds": math.nan}, "must be finite"),
        (builtins.validate_sleep, {"seconds": math.inf}, "must be finite"),
        (builtins.validate_sleep, {"seconds": 61}, "within 0.0..60.0"),
        (builtins.validate_sleep, {"seconds": -1}, "within"),
        (builtins.validate_sleep, {"seconds": True}, "must be a number"),
        (builtins.validate_sleep, {"seconds": "1"}, "must be a number"),
    ],
)
def test_invalid_inputs_are_rejected_clearly(validator, value, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidTaskError, match=fragment):
        validator(value)


def test_sleep_accepts_integer_seconds() -> None:
    assert builtins.validate_sleep({"seconds": 2}) == {"seconds": 2.0}
