"""Which Python a benchmark runs on: its figures depend on how that interpreter was built.

A CPython built with profile-guided and link-time optimisation (distribution packages, the
official Docker images) runs this code 1.15-1.2x faster than a source build without them
(pyenv's default). `make setup` prefers the former (scripts/pick-python.sh).
"""

from __future__ import annotations

import os
import platform
import sys


def describe() -> str:
    base = getattr(sys, "_base_executable", sys.executable)  # behind the venv's link
    return f"python {platform.python_version()} ({os.path.realpath(base)})"
