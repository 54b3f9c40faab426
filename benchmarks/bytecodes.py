"""Counting the bytecodes a call executes: a speed figure that does not drift with the machine.

The development VM's wall-clock speed moves by ~1.5x between phases; the number of bytecodes
the interpreter runs for the same work does not, so bench_decide.py and sim_bytecodes.py
report it next to their timings.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def per_function(fn: Callable[[], object]) -> collections.Counter[str]:
    """Bytecodes one call of `fn` executes, by `file:function` (`sys.settrace` opcodes)."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return counts
