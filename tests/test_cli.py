"""The command line: exit codes and one-line errors for failures inside the runtime."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_run_on_a_taken_port_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        # role cloud: no broker needed, so the HTTP bind is the only thing that can fail
        cfg.write_text(f"node_id: t1\nrole: cloud\nhttp: {{port: {port}}}\n")
        proc = subprocess.run(
            [sys.executable, "-m", "edgesched", "run", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgesched run: cannot listen on") and "http.port" in last


def test_help_lists_every_contract_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgesched", "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 0
    for command in ("run", "check-config", "demo", "simulate", "submit", "status",
                    "healthcheck", "version"):
        assert command in proc.stdout


def test_a_closed_stdout_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesched", "check-config"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write (`| head` that quit)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
