"""The recorder: finished tasks and the node's view of its cluster, to disk, for replay.

A trace sink (node/trace.py) and an async context manager, built by the composition root when
`record.path` is set. Every finished task's trace, and every `record.telemetry_every_s` a
snapshot of what the node knows of its neighbours and links, become one JSON line each in
gzip'd JSON-lines files in `record.path` (the format of docs/replay.md), read back by
`edgesched replay`.

Cost on the event loop: `on_task_finished` adds the trace's JSON line (encoded once by the
pipeline for every trace sink, node/trace.py `record_line`) to a list bounded by
`record.buffer_bytes` (past it the line is dropped and counted,
`edgesched_record_dropped_total{reason="buffer_full"}`).
Every FLUSH_S (sooner when the buffer is half full) a worker thread joins, compresses and
writes the batch; zlib lets go of the GIL while it compresses, so that part runs beside the
loop. In all, ~1-3 % of the node's CPU per local echo task and no throughput the benchmark
resolves (benchmarks/bench_record.py, docs/replay.md; the writer process of the first version
took 16-45 us per task from the cores the node and its broker share).

Files: `rec-<node>-<UTC start>-<seq>.jsonl.gz`, a new one past `record.file_bytes`
(compressed), the oldest deleted while this node's record files pass `record.max_bytes`
(several nodes may share a directory: each prunes only its own).
Each batch is sync-flushed, so an open file can be read up to its last batch (its missing gzip
trailer is reported by replay as a truncated end, the lines before it are used).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from edgesched.adapters.metrics import Metrics
from edgesched.core.model import LinkEstimate, NodeState

if TYPE_CHECKING:
    from edgesched.config import RecordSettings
    from edgesched.node.trace import TaskTrace

log = logging.getLogger("edgesched.recorder")

FLUSH_S = 0.5  # the writer's period


def doc_line(doc: dict[str, Any]) -> bytes:
    """A telemetry document's JSON line (TypeError if it cannot be encoded), copied out of
    orjson's buffer (at least 4 KB, whatever the line's length) as it waits to be written."""
    return bytes(memoryview(orjson.dumps(doc, default=str, option=orjson.OPT_APPEND_NEWLINE)))


class RecordFiles:
    """The rotating, size-bounded files of one recording directory (used from one thread)."""

    def __init__(self, directory: Path, node_id: str, *, max_bytes: int,
                 file_bytes: int) -> None:
        self.directory = directory
        self.node_id = node_id
        self.max_bytes = max_bytes
        self.file_bytes = min(file_bytes, max_bytes)
        self._raw: IO[bytes] | None = None
        self._gz: gzip.GzipFile | None = None
        self._seq = 0
        self.path: Path | None = None

    def write(self, lines: bytes) -> None:
        """Append JSON lines (one batch) and make them readable."""
        if not lines:
            return
        if self._gz is None:
            self._open()
        assert self._gz is not None and self._raw is not None
        self._gz.write(lines)
        self._gz.flush(zlib.Z_SYNC_FLUSH)  # readable up to here while still open
        if self._raw.tell() >= self.file_bytes:
            self.close()
            self.prune()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._seq += 1
        self.path = self.directory / f"rec-{self.node_id}-{stamp}-{self._seq:04d}.jsonl.gz"
        self._raw = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        # level 1: half the CPU of level 5 for ~25 % larger files
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=1)
        self.prune()

    def close(self) -> None:
        """Close the current file (its gzip trailer; a disk that refuses even that leaves a
        file whose lines up to the last batch are still read)."""
        gz, raw = self._gz, self._raw
        self._gz = self._raw = None
        for f in (gz, raw):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()

    def prune(self) -> int:
        """Delete the oldest record files while all of them pass max_bytes; how many."""
        # this node's files only: nodes sharing a directory each keep their own max_bytes
        mine = self.directory.glob(f"rec-{self.node_id}-*.jsonl.gz")
        files = sorted(mine, key=lambda f: (f.stat().st_mtime, f.name))
        sizes = {f: f.stat().st_size for f in files}
        total, deleted = sum(sizes.values()), 0
        for f in files:
            if total <= self.max_bytes or f == self.path:
                break
            total -= sizes[f]
            f.unlink(missing_ok=True)
            deleted += 1
        return deleted


class Recorder:
    """Trace sink + periodic telemetry snapshots -> record files (see the module docstring).

    `snapshot()` returns the telemetry document to record (the composition root builds it
    over the view, the executor's load and the estimator bank); it runs on the event loop."""

    def __init__(self, settings: RecordSettings, *, node_id: str, metrics: Metrics,
                 snapshot: Callable[[], dict[str, Any]] | None = None) -> None:
        assert settings.path is not None
        self.settings = settings
        self.metrics = metrics
        self.snapshot = snapshot
        self.node_id = node_id
        self.directory = Path(settings.path)
        self.files = RecordFiles(self.directory, node_id, max_bytes=settings.max_bytes,
                                 file_bytes=settings.file_bytes)
        # the lines waiting for the writer thread, their bytes, and how many are tasks' (a
        # list the thread joins: appending to one growing bytearray cost the loop ~3 us a
        # line, its reallocations copying what was already there)
        self._lines: list[bytes] = []
        self._buffered = 0
        self._tasks = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._stopping = False

    # -- the sink (event loop) ----------------------------------------------------------------

    def on_task_finished(self, trace: TaskTrace, line: bytes | None) -> None:
        if line is None:
            self._lost("write_error", f"task {trace.id} could not be encoded")
            return
        if self._offer(line):
            self._tasks += 1

    def _offer(self, line: bytes) -> bool:
        if self._buffered + len(line) > self.settings.buffer_bytes:
            self.dropped += 1
            self.metrics.record_dropped.labels(reason="buffer_full").inc()
            return False
        self._lines.append(line)
        self._buffered += len(line)
        if self._buffered > self.settings.buffer_bytes // 2:
            self._wake.set()
        return True

    def _lost(self, reason: str, why: str, lines: int = 1) -> None:
        self.metrics.record_dropped.labels(reason=reason).inc(lines)
        log.warning("record: %d line(s) not written to %s: %s", lines, self.directory, why)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Recorder:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("record.path %s cannot be created (%s): nothing will be recorded",
                      self.directory, exc.strerror)
        self._task = asyncio.get_running_loop().create_task(self._loop(),
                                                            name="edgesched.recorder")
        log.info("recording finished tasks into %s (at most %d bytes)", self.directory,
                 self.settings.max_bytes)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True  # the loop ends after the batch it may be writing
        self._wake.set()
        if self._task is not None:
            await self._task
        self._record_snapshot()  # the view as it was at the end
        await self._flush()  # what is left
        await asyncio.to_thread(self.files.close)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_snapshot = loop.time()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_S)
            self._wake.clear()
            if loop.time() >= next_snapshot:
                next_snapshot = loop.time() + self.settings.telemetry_every_s
                self._record_snapshot()
            await self._flush()

    def _record_snapshot(self) -> None:
        if self.snapshot is None:
            return
        try:
            line = doc_line(self.snapshot())
        except TypeError as exc:
            self._lost("write_error", f"a telemetry line could not be encoded: {exc}")
            return
        except Exception:  # a snapshot's bug must not stop the recording
            log.exception("telemetry snapshot for the record failed")
            return
        self._offer(line)

    async def _flush(self) -> None:
        """Compress and write what the buffer holds, in a worker thread."""
        if not self._lines:
            return
        lines, tasks = self._lines, self._tasks
        self._lines, self._buffered, self._tasks = [], 0, 0
        try:
            await asyncio.to_thread(self._write, lines)
        except Exception as exc:  # a full disk, a removed directory: lines lost, never the node
            await asyncio.to_thread(self.files.close)
            self._lost("write_error", f"{type(exc).__name__}: {exc}", len(lines))
            return
        if tasks:
            self.metrics.decisions_recorded.inc(tasks)

    def _write(self, lines: list[bytes]) -> None:
        """In the worker thread: one batch joined, compressed and written."""
        self.files.write(b"".join(lines))


def telemetry_source(
    *, node_id: str, speed: float, cloud: bool,
    neighbours: Callable[[float], Sequence[NodeState]],
    load: Callable[[], Any],
    link: Callable[[str, float], LinkEstimate],
    speeds: Callable[[], dict[str, float]] | None = None,
    static: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], dict[str, Any]]:
    """The recorder's `snapshot`: a telemetry line (docs/replay.md) of what this node knows
    now: its own load, each neighbour as last reported, and the link estimates to each;
    `static` (the policy settings, the telemetry interval) is added to every line."""

    def snapshot() -> dict[str, Any]:
        now = clock()
        ld = load()
        known = speeds() if speeds is not None else {}
        nodes = [n for n in neighbours(now) if n.role == "edge"]
        targets = [n.node_id for n in nodes] + (["cloud"] if cloud else [])
        links = {}
        for target in targets:
            est = link(target, now)
            links[target] = {"rtt_s": round(est.rtt_s, 6), "rtt_std_s": round(est.rtt_std_s, 6),
                             "bandwidth_bps": round(est.bandwidth_bps, 1)}
        return {
            "kind": "telemetry", "v": 1, "node": node_id, "t_unix_s": round(time.time(), 6),
            "t_mono_s": round(now, 6),
            "local": {"slots": ld.slots, "running": ld.running, "queued": ld.queued,
                      "est_wait_s": round(ld.est_wait_s, 6), "speed": speed},
            "neighbours": [{
                "node_id": n.node_id, "liveness": n.liveness.value, "age_s": round(n.age(now), 3),
                "slots": n.slots, "running": n.running, "queued": n.queued,
                "est_wait_s": round(n.est_wait_s, 6), "cpu_util": round(n.cpu_util, 4),
                "battery": n.battery, "speed": known.get(n.node_id)} for n in nodes],
            "links": links, **(static or {}),
        }

    return snapshot
