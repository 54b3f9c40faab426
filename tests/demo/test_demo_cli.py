"""`edgesched demo` command-line failures: clear one-line errors and their exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.support.broker import free_port


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgesched", "demo", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_unreachable_broker_is_a_clear_runtime_error() -> None:
    port = free_port()
    proc = _demo("--broker", f"127.0.0.1:{port}", "--duration", "5")
    assert proc.returncode == 1
    assert f"cannot reach the MQTT broker at 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_are_usage_errors() -> None:
    assert _demo("--duration", "-3").returncode == 2
    assert _demo("--broker", "nohostport").returncode == 2
