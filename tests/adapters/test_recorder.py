"""The recorder (adapters/recorder.py): its files, its byte bounds, its writer thread.

Real files in a temporary directory; the traces are built by the node's own code
(node/trace.py) from the in-process dispatcher world of test_fallback_chain, and handed to
the recorder with their record line as the pipeline hands them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.recorder import Recorder, RecordFiles, doc_line
from edgesched.config import RecordSettings
from edgesched.node.trace import TaskTrace, new_trace, record_line
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


def finished(rec: Recorder, trace: TaskTrace) -> None:
    """Hand `trace` to the recorder as the pipeline does (None: it cannot be encoded)."""
    try:
        line: bytes | None = record_line(trace)
    except TypeError:
        line = None
    rec.on_task_finished(trace, line)


def _lines(directory: Path) -> list[dict[str, object]]:
    out = []
    for f in sorted(directory.glob("rec-*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
    return out


def test_a_record_line_is_the_trace_s_record_form() -> None:
    traces = [_trace(i) for i in range(3)]
    for t in traces:
        line = record_line(t)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == t.to_dict()
        assert TaskTrace.from_dict(json.loads(line)).to_dict() == t.to_dict()
    # JSON has no NaN: written as null; what cannot be encoded at all raises TypeError
    assert json.loads(doc_line({"kind": "telemetry", "nan": float("nan")})) == {
        "kind": "telemetry", "nan": None}
    with pytest.raises(TypeError):
        doc_line({"kind": "telemetry", "huge": 1 << 70})
    traces[0].error = "\ud800"  # a lone surrogate: not UTF-8
    with pytest.raises(TypeError):
        record_line(traces[0])


def test_files_rotate_and_the_oldest_go_past_max_bytes(tmp_path: Path) -> None:
    files = RecordFiles(tmp_path, "a", max_bytes=40_000, file_bytes=10_000)
    other = tmp_path / "rec-b-20000101T000000Z-0001.jsonl.gz"  # another node's: not pruned
    other.write_bytes(gzip.compress(b"{}\n") * 100)
    lines = b"".join(record_line(_trace(i)) for i in range(40))
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
    lines = b"".join(record_line(_trace(i)) for i in range(5))
    files.write(lines)  # not closed: no gzip trailer yet, as while the node runs
    warnings: list[str] = []
    rec = read_recording(tmp_path, warn=warnings.append)
    assert len(rec.tasks) == 5
    assert len(warnings) == 1 and "truncated" in warnings[0] and ":6:" in warnings[0]
    files.close()


async def test_recorder_writes_traces_and_telemetry(tmp_path: Path) -> None:
    metrics = Metrics()
    settings = RecordSettings(path=tmp_path / "rec", telemetry_every_s=0.1)
    snapshots = 0

    def snapshot() -> dict[str, object]:
        nonlocal snapshots
        snapshots += 1
        return {"kind": "telemetry", "v": 1, "node": "a", "t_unix_s": 1.0, "neighbours": []}

    w = World()
    async with Recorder(settings, node_id="a", metrics=metrics, snapshot=snapshot) as rec:
        for i in range(50):
            finished(rec, _trace(i, w))
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
    rec = Recorder(settings, node_id="a", metrics=metrics)
    trace = _trace(0)
    for _ in range(200):  # never entered: nothing drains the buffer
        finished(rec, trace)
    assert rec.dropped > 0
    kept = 200 - rec.dropped
    assert kept * len(record_line(trace)) <= 64 << 10 < (kept + 1) * len(record_line(trace))
    assert metrics.registry.get_sample_value(
        "edgesched_record_dropped_total", {"reason": "buffer_full"}) == rec.dropped


async def test_a_disk_that_refuses_the_lines_costs_them_counted_not_the_node(
        tmp_path: Path) -> None:
    metrics = Metrics()
    (tmp_path / "rec").write_text("a file where the directory should be")
    settings = RecordSettings(path=tmp_path / "rec", telemetry_every_s=3600)
    async with Recorder(settings, node_id="a", metrics=metrics) as rec:
        for i in range(20):
            finished(rec, _trace(i))
        bad = _trace(20)
        bad.error = "\ud800"  # cannot be encoded: counted too, the others unaffected
        finished(rec, bad)
    value = metrics.registry.get_sample_value
    assert value("edgesched_decisions_recorded_total") == 0
    assert value("edgesched_record_dropped_total", {"reason": "write_error"}) == 21


@pytest.mark.parametrize("bad", [{"max_bytes": 10}, {"explore": 0.9}, {"buffer_bytes": 0}])
def test_record_settings_refuse_out_of_range_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RecordSettings(**bad)  # type: ignore[arg-type]
