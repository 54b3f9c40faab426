"""`edgesched demo` end to end: real broker, four real node processes, the real fleet."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgesched.sim.replay import read_recording
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT_S = 200


def _run_demo(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesched", "demo", "--duration", "20", "--json", str(out),
         *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)},  # its recording lands here
    )
    assert proc.returncode == 0, f"demo exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text()), proc.stdout


def _check(doc: dict[str, Any], stdout: str) -> None:
    tasks = doc["tasks"]
    assert tasks["submitted"] > 50
    assert tasks["lost"] == 0, doc
    assert tasks["submitted"] == sum(
        tasks[k] for k in ("completed", "failed", "rejected", "expired", "lost"))
    for placement in ("local", "neighbour", "cloud"):
        assert doc["placements"][placement] > 0, (placement, doc["by_phase"])
    assert doc["latency_s"]["p50"] is not None
    assert doc["latency_s"]["p50"] <= doc["latency_s"]["p95"]
    assert doc["energy_j"] > 0
    # not a terminal: plain periodic lines, then the summary
    assert "summary" in stdout
    assert re.search(r"\[\s*\d+\.\ds calm\]", stdout)


def test_demo_with_embedded_broker(tmp_path: Path) -> None:
    doc, stdout = _run_demo(tmp_path)
    _check(doc, stdout)
    assert "embedded amqtt" in doc["broker"]
    # the edge nodes recorded every submission; the summary says where; it replays
    record = Path(doc["record_dir"])
    assert record.parent == tmp_path and str(record) in "".join(stdout.split())
    recording = read_recording(record)
    # all but what a SIGKILLed node had not handed to its writer yet (its last 0.5 s)
    submitted = doc["tasks"]["submitted"]
    assert 0.95 * submitted <= len(recording.tasks) <= submitted, recording.problems


def test_demo_against_mosquitto_v5(tmp_path: Path, mosquitto: Mosquitto) -> None:
    doc, stdout = _run_demo(tmp_path, "--broker", mosquitto.address)
    _check(doc, stdout)
    assert "MQTT v5" in doc["broker"]
    # nothing of the run is left retained on the user's broker
    left = subprocess.run(
        ["mosquitto_sub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-t", "#", "-v",
         "--retained-only", "-W", "2"],
        capture_output=True, text=True, timeout=20,
    )
    assert "/state" not in left.stdout, left.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead but still has a pid until its parent reaps it
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesched", "demo", "--duration", "60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path,
    )
    pids: list[int] = []
    deadline = time.monotonic() + 90
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first periodic line means every node is up
            if re.search(r"\[\s*\d+\.\ds ", line) or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"exit {proc.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)", stderr)]
    assert len(pids) == 4, stderr
    gone_by = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "node processes outlived the demo"
