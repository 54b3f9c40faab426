"""`edgesched replay` over a real recording (issue 17).

`data/record-cost/` is what `record.path` wrote on edge node E1 of a real cluster (E1 with 2
slots, an idle neighbour E2, a cloud node behind a 100 ms WAN emulator) during one run of
tests/e2e/test_replay_counterfactual.py: 191 `sleep` tasks (6 warm-up ones, then a Poisson
stream at ~80 % of E1's slots, deadline 0.35 s) under `policy.name: cost` with
`record.explore: 0.1`. The live runs of that same workload measured: cost 96.8 ms mean
(observed here 94.5 ms with the warm-up), local 145.2 ms / 0 misses, cloud 198.5 ms / 2.7 %.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgesched.errors import UsageError
from edgesched.sim.replay import emit_scenario, fit, observed_summary, read_recording, replay
from edgesched.sim.runner import run_scenario
from edgesched.sim.scenario import load_scenario

DATA = Path(__file__).parent / "data" / "record-cost"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recording() -> object:
    return read_recording(DATA)


def test_the_recording_is_read_whole(recording: object) -> None:
    rec = recording
    assert rec.problems == [] and rec.files == 1  # type: ignore[attr-defined]
    assert len(rec.tasks) == 191 and rec.telemetry  # type: ignore[attr-defined]
    obs = observed_summary(rec.tasks)  # type: ignore[attr-defined]
    assert obs["policy"] == "cost" and obs["completed"] == 191 and obs["explored"] > 0
    assert obs["placements"]["local"] > 0 and obs["placements"]["cloud"] > 0


def test_replaying_under_its_own_policy_reproduces_the_observed_mean(recording: object) -> None:
    report = replay(recording, ["cost"])  # type: ignore[arg-type]
    obs, sim = report["observed"], report["policies"]["cost"]
    assert sim["mean_latency_s"] == pytest.approx(obs["mean_latency_s"], rel=0.15)
    assert abs(sim["deadline_miss_ratio"] - obs["deadline_miss_ratio"]) <= 0.02
    # the hindsight oracle is always there, and no policy beats it by much
    oracle = report["policies"]["oracle"]
    assert report["regret_s"] == pytest.approx(obs["mean_latency_s"] - oracle["mean_latency_s"],
                                               abs=1e-6)
    assert report["regret_s"] >= 0 and sim["regret_s"] >= -0.002


def test_the_off_policy_estimate_rests_on_the_recorded_decisions(recording: object) -> None:
    report = replay(recording, ["cost", "cloud"])  # type: ignore[arg-type]
    obs = report["observed"]
    own, cloud = report["policies"]["cost"]["ips"], report["policies"]["cloud"]["ips"]
    # the recorded policy agrees with itself on every decision it did not explore
    assert own["support"] >= 191 - obs["explored"]
    assert own["mean_latency_s"] == pytest.approx(obs["mean_latency_s"], rel=0.1)
    # `cloud` rests on the few tasks the recording sent there, weighted by 1 / propensity
    assert 0 < cloud["support"] <= obs["placements"]["cloud"] + 2
    assert cloud["mean_latency_s"] > 0.1  # every one of them paid the 100 ms WAN
    assert "ips" not in report["policies"]["oracle"]


def test_the_fit_reads_what_was_measured(recording: object) -> None:
    model = fit(recording)  # type: ignore[arg-type]
    doc = model.scenario_doc
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert set(nodes) == {"E1", "E2"} and nodes["E1"]["slots"] == 2
    # the WAN emulator's 100 ms and the loopback MQTT hop, from the attempts' network times
    assert nodes["E1"]["uplink"]["rtt_s"] == pytest.approx(0.10, abs=0.01)
    assert doc["links"]["rtt_s"] < 0.02
    (sleep,) = doc["task_types"]
    assert sleep["exact"] is True and sleep["deadline_s"] == 0.35
    assert len(model.stream) == 191
    assert model.stream.time[0] == 0.0 and model.stream.time[-1] == pytest.approx(10.3, abs=0.5)


def test_the_emitted_scenario_runs_in_the_simulator(recording: object, tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    emit_scenario(recording, path)  # type: ignore[arg-type]
    scenario = load_scenario(path)
    assert [a.node for a in scenario.arrivals] == ["E1"]
    assert scenario.arrivals[0].rate_per_s == pytest.approx(191 / 10.3, rel=0.1)
    report = run_scenario(scenario, ["local", "cost"], seed=3)
    assert report["tasks"] > 100
    assert report["policies"]["cost"]["completed"] > 0


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "rec"
    shutil.copytree(DATA, target)
    return target


def test_malformed_truncated_and_foreign_files_are_skipped_with_file_and_line(
        tmp_path: Path) -> None:
    rec_dir = _copy(tmp_path)
    good = next(rec_dir.iterdir())
    lines = gzip.decompress(good.read_bytes()).splitlines(keepends=True)
    # a truncated copy: the compressed stream cut in its middle (the first lines survive)
    whole = gzip.compress(b"".join(lines[:40]))
    (rec_dir / "rec-E1-cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    # malformed lines among good ones (other ids, so they are new tasks)
    bad = [b"{not json\n", b"[1, 2]\n", b'{"kind": "task", "v": 1, "id": 5}\n']
    renamed = [line.replace(b'"id":"', b'"id":"x-') for line in lines[:3]]
    (rec_dir / "rec-E1-bad.jsonl.gz").write_bytes(gzip.compress(b"".join(
        renamed[:1] + bad + renamed[1:])))
    # foreign files: a text file, a gzip of something else, a JSON file of another tool
    (rec_dir / "README.txt").write_text("notes about this directory\nline two\nthree\n")
    (rec_dir / "other.gz").write_bytes(gzip.compress(b"\x00\x01binary" * 100))
    (rec_dir / "metrics.jsonl").write_text('{"metric": 1}\n' * 5)
    (rec_dir / "empty.jsonl.gz").write_bytes(b"")
    warnings: list[str] = []
    rec = read_recording(rec_dir, warn=warnings.append)
    text = "\n".join(rec.problems)
    assert warnings == rec.problems
    assert f"{rec_dir / 'rec-E1-bad.jsonl.gz'}:2: not JSON" in text
    assert f"{rec_dir / 'rec-E1-bad.jsonl.gz'}:3: not a JSON object" in text
    assert f"{rec_dir / 'rec-E1-bad.jsonl.gz'}:4: 'id' missing or not a string" in text
    assert "rec-E1-cut.jsonl.gz" in text and "truncated" in text
    for foreign in ("README.txt", "other.gz", "metrics.jsonl"):
        assert f"{rec_dir / foreign}: not an edgesched record file" in text, text
    # what was good is used: the original file, the 3 renamed tasks; the cut file's lines
    # are copies of tasks already read (same id, same arrival): counted once
    assert len(rec.tasks) == 191 + 3
    report = replay(rec, ["local"])
    assert report["skipped"] == rec.problems and report["tasks"] == 194


@pytest.mark.parametrize(("path", "value"), [
    (("arrived_unix_s",), None), (("work",), -1), (("input_bytes",), float("nan")),
    (("deadline_s",), 0), (("origin",), "no spaces allowed"), (("type",), 7),
    (("attempts", 0, "exec_s"), None), (("attempts", 0, "placement"), "moon"),
    (("candidates", 0, "slots"), 1.5), (("candidates", 0, "bandwidth_bps"), -3),
    (("candidates",), 5), (("candidates", 0), "x"),
])
def test_a_damaged_field_skips_its_line_and_nothing_else(
        tmp_path: Path, path: tuple[object, ...], value: object) -> None:
    lines = gzip.decompress(next(DATA.iterdir()).read_bytes()).splitlines()
    docs = [json.loads(line) for line in lines]
    tasks = [d for d in docs if d["kind"] == "task"]
    target: object = tasks[5]
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    (tmp_path / "rec.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    rec = read_recording(tmp_path)
    assert len(rec.tasks) == 190 and len(rec.problems) == 1, rec.problems
    assert f"{tmp_path / 'rec.jsonl'}:" in rec.problems[0]
    assert replay(rec, ["local"])["tasks"] == 190


def test_a_long_idle_gap_is_replayed_short(tmp_path: Path) -> None:
    docs = [json.loads(line) for line in gzip.decompress(
        next(DATA.iterdir()).read_bytes()).splitlines()]
    tasks = sorted((d for d in docs if d["kind"] == "task"), key=lambda d: d["arrived_unix_s"])
    for d in tasks[100:]:  # the second half of the tasks a week later
        d["arrived_unix_s"] += 7 * 86400
    (tmp_path / "rec.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    model = fit(read_recording(tmp_path))
    assert model.stream.time[-1] < 15 + 60
    assert any("idle gap" in note for note in model.notes)


def test_at_most_max_tasks_of_the_most_recent_are_read() -> None:
    whole = read_recording(DATA)
    rec = read_recording(DATA, max_tasks=50)
    assert [t["id"] for t in rec.tasks] == [t["id"] for t in whole.tasks[-50:]]
    assert rec.problems == [f"{DATA}: 141 older task(s) beyond the 50 most recent not "
                            "replayed (--max-tasks)"]


def test_a_directory_without_any_record_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        read_recording(tmp_path / "missing")
    (tmp_path / "junk.txt").write_text("x\n")
    with pytest.raises(UsageError, match="no recorded task"):
        read_recording(tmp_path)


def test_the_command_prints_the_table_and_writes_json_and_scenario(tmp_path: Path) -> None:
    rec_dir = _copy(tmp_path)
    (rec_dir / "stray.log").write_text("foreign\n")
    out_json, out_yaml = tmp_path / "r.json", tmp_path / "s.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesched", "replay", str(rec_dir), "--policy", "local",
         "--policy", "cloud", "--json", str(out_json), "--emit-scenario", str(out_yaml)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"{rec_dir / 'stray.log'}: not an edgesched record file" in proc.stderr
    assert "replay: local 191/191 tasks" in proc.stderr  # progress
    assert "observed (cost)" in proc.stdout and "oracle" in proc.stdout
    report = json.loads(out_json.read_text())
    assert set(report["policies"]) == {"local", "cloud", "oracle"}
    keys = {"completed", "mean_latency_s", "p50_latency_s", "p95_latency_s", "p99_latency_s",
            "deadline_miss_ratio", "energy_j_per_task", "placements", "failures"}
    assert keys <= set(report["policies"]["local"]) and keys <= set(report["observed"])
    assert isinstance(report["regret_s"], float)
    assert yaml.safe_load(out_yaml.read_text())["version"] == 1
    bad = subprocess.run([sys.executable, "-m", "edgesched", "replay", str(rec_dir),
                          "--policy", "nope"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert bad.returncode == 2 and "unknown policy 'nope'" in bad.stderr
