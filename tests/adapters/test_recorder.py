"""The recorder (adapters/recorder.py): its files, its byte bounds, its writer process.

Real files in a temporary directory and a real writer process; the traces are built by the
node's own code (node/trace.py) from the in-process dispatcher world of test_fallback_chain.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.recorder import Recorder, RecordFiles, encode_lines
from edgesched.config import RecordSettings
from edgesched.node.trace import ROW_SCHEMA, TaskTrace, new_trace
from edgesched.sim.replay import read_recording
from tests.node.test_fallback_chain import World


def _trace(i: int, w: World | None = None) -> TaskTrace:
    w = w or World()
    job = w.job(deadline_s=5.0)
    trace = new_trace(task_id=f"t{i}", task_type="echo", origin="a", role="edge",
                      received_at=job.received_at + i * 0.01, work=100.0, exact_s=None,
                      input_bytes=100, output_bytes=100, deadline_s=5.0, priority=0,
                      device_id=None)
    w.dispatcher.decide(job, trace)
    trace.status, trace.latency_s, trace.placement = "ok", 0.01, "local"
    return trace


def _lines(directory: Path) -> list[dict[str, object]]:
    out = []
    for f in sorted(directory.glob("rec-*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
    return out


def test_the_writer_s_lines_are_the_trace_s_record_form() -> None:
    traces = [_trace(i) for i in range(3)]
    telemetry = {"kind": "telemetry", "v": 1, "node": "a", "neighbours": []}
    items = [("t", t.to_row()) for t in traces] + [("d", telemetry)]
    items.append(("d", {"kind": "telemetry", "nan": float("nan")}))  # never invalid JSON
    items.append(("d", {"kind": "telemetry", "huge": 1 << 70}))  # not encodable: counted
    data, tasks, bad = encode_lines(ROW_SCHEMA, items)
    lines = data.splitlines()
    assert (tasks, bad, len(lines)) == (3, 1, 5)
    assert [json.loads(x) for x in lines[:3]] == [t.to_dict() for t in traces]
    assert json.loads(lines[4]) == {"kind": "telemetry", "nan": None}
    assert TaskTrace.from_dict(json.loads(lines[0])).to_dict() == traces[0].to_dict()


def test_files_rotate_and_the_oldest_go_past_max_bytes(tmp_path: Path) -> None:
    files = RecordFiles(tmp_path, "a", max_bytes=40_000, file_bytes=10_000)
    other = tmp_path / "rec-b-20000101T000000Z-0001.jsonl.gz"  # another node's: not pruned
    other.write_bytes(gzip.compress(b"{}\n") * 100)
    lines, _, _ = encode_lines(ROW_SCHEMA, [("t", _trace(i).to_row()) for i in range(40)])
    for _ in range(40):
        files.write(lines)
    files.close()
    mine = sorted(tmp_path.glob("rec-a-*.jsonl.gz"))
    assert len(mine) >= 3  # rotated
    assert sum(f.stat().st_size for f in mine) <= 40_000 + 10_000 + len(lines)
    assert other.exists()
    newest = gzip.decompress(mine[-1].read_bytes()).splitlines()
    assert newest and json.loads(newest[-1])["id"] == "t39"


def test_an_open_file_is_readable_up_to_its_last_batch(tmp_path: Path) -> None:
    files = RecordFiles(tmp_path, "a", max_bytes=1 << 20, file_bytes=1 << 20)
    lines, _, _ = encode_lines(ROW_SCHEMA, [("t", _trace(i).to_row()) for i in range(5)])
    files.write(lines)  # not closed: no gzip trailer yet, as while the node runs
    warnings: list[str] = []
    rec = read_recording(tmp_path, warn=warnings.append)
    assert len(rec.tasks) == 5
    assert len(warnings) == 1 and "truncated" in warnings[0] and ":6:" in warnings[0]
    files.close()


async def test_recorder_writes_traces_and_telemetry_through_its_writer_process(
        tmp_path: Path) -> None:
    metrics = Metrics()
    settings = RecordSettings(path=tmp_path / "rec", telemetry_every_s=0.1)
    snapshots = 0

    def snapshot() -> dict[str, object]:
        nonlocal snapshots
        snapshots += 1
        return {"kind": "telemetry", "v": 1, "node": "a", "t_unix_s": 1.0, "neighbours": []}

    w = World()
    async with Recorder(settings, node_id="a", metrics=metrics, row_schema=ROW_SCHEMA,
                        snapshot=snapshot) as rec:
        for i in range(50):
            rec.on_task_finished(_trace(i, w))
    docs = _lines(tmp_path / "rec")
    tasks = [d for d in docs if d["kind"] == "task"]
    assert [d["id"] for d in tasks] == [f"t{i}" for i in range(50)]
    assert any(d["kind"] == "telemetry" for d in docs) and snapshots >= 1
    value = metrics.registry.get_sample_value
    assert value("edgesched_decisions_recorded_total") == 50
    assert value("edgesched_record_dropped_total", {"reason": "buffer_full"}) == 0


async def test_a_full_buffer_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    metrics = Metrics()
    settings = RecordSettings(path=tmp_path / "rec", buffer_bytes=64 << 10)
    rec = Recorder(settings, node_id="a", metrics=metrics, row_schema=ROW_SCHEMA)
    trace = _trace(0)
    for _ in range(200):  # never entered: nothing drains the buffer
        rec.on_task_finished(trace)
    assert rec.dropped > 0
    kept = 200 - rec.dropped
    assert kept * 900 <= 64 << 10  # each trace counted at >= its base estimate
    assert metrics.registry.get_sample_value(
        "edgesched_record_dropped_total", {"reason": "buffer_full"}) == rec.dropped


@pytest.mark.parametrize("bad", [{"max_bytes": 10}, {"explore": 0.9}, {"buffer_bytes": 0}])
def test_record_settings_refuse_out_of_range_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RecordSettings(**bad)  # type: ignore[arg-type]
