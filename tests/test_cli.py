"""The command line: exit codes and one-line errors for failures inside the runtime."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def edgesched(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGESCHED_")}
    return subprocess.run([sys.executable, "-m", "edgesched", *argv], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env={**base, **(env or {})})


def test_version_flag_and_command() -> None:
    from edgesched import __version__

    for argv in (("--version",), ("version",)):
        proc = edgesched(*argv)
        assert (proc.returncode, proc.stdout.strip()) == (0, f"edgesched {__version__}"), argv


def test_help_is_for_operators(capsys: pytest.CaptureFixture[str]) -> None:
    from edgesched import cli
    from edgesched.cli import COMMANDS, main

    internal = (cli.__doc__ or "").splitlines()[0]  # the module's own docstring
    top = edgesched("--help")
    assert internal not in top.stdout and "§" not in top.stdout
    assert "EDGESCHED_MQTT__HOST" in top.stdout and "--version" in top.stdout
    for command in COMMANDS:  # every command, also the ones added later
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert exited.value.code == 0, command
        assert "example:" in text and f"edgesched {command}" in text, command
        assert internal not in text and "§" not in text and "--log-level" in text, command


def test_global_flags_before_or_after_the_subcommand(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("node_id: t1\nrole: cloud\n")
    for argv in (("--log-level", "debug", "check-config", "--config", str(cfg)),
                 ("check-config", "--config", str(cfg), "--log-level", "debug"),
                 ("--log-format", "json", "check-config", "--log-level", "warning",
                  "--config", str(cfg))):
        proc = edgesched(*argv)
        assert proc.returncode == 0, (argv, proc.stderr)
    bad = edgesched("check-config", "--log-level", "loud")
    assert bad.returncode == 2 and "--log-level" in bad.stderr


def test_check_config_quiet_prints_only_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("node_id: t1\n")
    proc = edgesched("check-config", "--quiet", "--config", str(good))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert len(edgesched("check-config", "--config", str(good)).stdout.splitlines()) > 50
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_id: t1\nmqtt: {port: 0}\n")
    proc = edgesched("check-config", "-q", "--config", str(bad))
    assert proc.returncode == 78 and proc.stdout == ""
    assert proc.stderr.startswith("mqtt.port:"), proc.stderr
