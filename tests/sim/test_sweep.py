"""`edgesched simulate SCENARIO --sweep KEY=START:STOP:STEP` (issue 20, part 5): locally in
processes, and on a real Dask distributed cluster of two workers started here (loopback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgesched.cli import main
from edgesched.errors import UsageError
from edgesched.sim.scenario import _Loader
from edgesched.sim.sweep import parse_sweep, read_scenario_mapping, run_sweep, set_key

ROOT = Path(__file__).resolve().parents[2]
APP2 = ROOT / "configs" / "scenarios" / "edgecloudsim_app2_200.yaml"
DASK = Path(sys.executable).with_name("dask")


@pytest.fixture(scope="module")
def small_app2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The EdgeCloudSim scenario cut to 60 simulated seconds (a few hundred tasks)."""
    raw = yaml.load(APP2.read_text(encoding="utf-8"), Loader=_Loader)
    raw["duration_s"] = 60
    path = tmp_path_factory.mktemp("sweep") / "app2_small.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_parse_sweep_values_and_errors() -> None:
    spec = parse_sweep("devices=200:2400:200")
    assert spec.key == "devices" and spec.values[0] == 200 and spec.values[-1] == 2400
    assert len(spec.values) == 12
    assert parse_sweep("cloud.bandwidth_bps=1e6:2e6:0.5e6").values == (1e6, 1.5e6, 2e6)
    for bad in ("devices", "devices=1:2", "devices=a:2:1", "devices=5:1:1", "devices=1:2:0",
                "devices=1:100000:1"):
        with pytest.raises(UsageError):
            parse_sweep(bad)


def test_set_key_walks_dotted_paths_and_keeps_integers() -> None:
    raw = {"devices": {"count": 200}, "nodes": [{"id": "a", "slots": 2}],
           "cloud": {"bandwidth_bps": 2.0e7}, "name": "x"}
    assert set_key(raw, "devices", 400)["devices"]["count"] == 400  # a block's count
    assert set_key(raw, "nodes.0.slots", 3)["nodes"][0]["slots"] == 3
    assert set_key(raw, "cloud.bandwidth_bps", 1e6)["cloud"]["bandwidth_bps"] == 1e6
    assert raw["devices"]["count"] == 200  # the original is not changed
    for key, value in (("nodes.0.slots", 2.5), ("nodes.4.slots", 1), ("name", 1),
                       ("cloud.rtt_s", 1), ("nodes.0.id", 1)):
        with pytest.raises(UsageError):
            set_key(raw, key, value)


def test_a_value_that_breaks_the_scenario_is_refused_before_running(small_app2: Path) -> None:
    raw = read_scenario_mapping(small_app2)
    with pytest.raises(UsageError, match=r"nodes.0.slots=0 makes the scenario invalid"):
        run_sweep(raw, parse_sweep("nodes.0.slots=0:2:1"), ["ecs_network"], jobs=1)


def test_local_sweep_writes_json_and_png(small_app2: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    code = main(["simulate", str(small_app2), "--sweep", "devices=20:60:20",
                 "--policy", "ecs_network", "--policy", "ecs_utilization", "--jobs", "2",
                 "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    report = json.loads(out_json.read_text(encoding="utf-8"))
    assert report["key"] == "devices" and report["values"] == [20, 40, 60]
    assert report["policies"] == ["ecs_network", "ecs_utilization"]
    tasks = [p["tasks"] for p in report["points"]]
    assert tasks[0] < tasks[1] < tasks[2]  # more devices, more tasks
    for point in report["points"]:
        for summary in point["policies"].values():
            assert summary["completed"] == point["tasks"]  # no deadlines: nothing is lost
            assert summary["mean_latency_s"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "sweep of devices" in printed and "plot written" in printed


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


@pytest.fixture()
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A Dask scheduler and two single-threaded workers, separate processes on loopback."""
    pytest.importorskip("distributed")
    if not DASK.exists():
        pytest.skip("the dask command is not installed (pip install 'edgesched[dask]')")
    info = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    common = ["--no-dashboard"]
    procs = [subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
         str(info), *common], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        _wait_for(info.exists, 60, "the Dask scheduler")
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(DASK), "worker", "--scheduler-file", str(info), "--host", "127.0.0.1",
                 "--nthreads", "1", "--no-nanny", *common], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        address = json.loads(info.read_text(encoding="utf-8"))["address"]
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_on_a_dask_cluster_matches_the_local_sweep(small_app2: Path,
                                                          dask_cluster: str) -> None:
    raw = read_scenario_mapping(small_app2)
    spec = parse_sweep("devices=20:40:20")
    policies = ["ecs_network", "cost"]
    on_dask = run_sweep(raw, spec, policies, dask_address=dask_cluster)
    local = run_sweep(raw, spec, policies, jobs=1)
    assert on_dask == local  # where a run happens changes nothing
    assert [p["value"] for p in on_dask["points"]] == [20, 40]


def test_an_unreachable_dask_scheduler_is_a_clear_error(small_app2: Path) -> None:
    pytest.importorskip("distributed")
    from edgesched.errors import EdgeschedError

    raw = read_scenario_mapping(small_app2)
    with pytest.raises(EdgeschedError, match="cannot reach the Dask scheduler"):
        run_sweep(raw, parse_sweep("devices=20:20:1"), ["ecs_network"],
                  dask_address="tcp://127.0.0.1:9")
