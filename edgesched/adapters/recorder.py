"""The recorder: finished tasks and the node's view of its cluster, to disk, for replay.

A trace sink (node/trace.py) and an async context manager, built by the composition root when
`record.path` is set. Every finished task's trace, and every `record.telemetry_every_s` a
snapshot of what the node knows of its neighbours and links, become one JSON line each in
gzip'd JSON-lines files in `record.path` (the format of docs/replay.md), read back by
`edgesched replay`.

Cost on the event loop: `on_task_finished` turns the trace into a row of plain tuples (a few
us) and appends it to a buffer (its size estimated, bounded by `record.buffer_bytes`; past it
the row is dropped and counted, `edgesched_record_dropped_total{reason="buffer_full"}`). Every
FLUSH_S (sooner when the buffer is half full) a worker thread pickles the batch and pipes it
to the writer process (`writer_main`, started with the recorder, at a lower CPU priority),
which encodes the JSON lines, compresses and writes them and answers how many it wrote
(15-30 us of CPU per task in all, benchmarks/bench_record.py: too much for the node's own
event loop).

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
import multiprocessing
import os
import pickle
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
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
WRITER_REPLY_S = 30.0  # a batch not acknowledged by the writer process by then is lost
WRITER_EXIT_S = 5.0
WRITER_RESTART_S = 5.0
WRITER_NICE = 10
TRACE_BASE_BYTES = 900  # a trace's estimated size in memory and on a line ...
CANDIDATE_BYTES = 420  # ... plus this per candidate
ATTEMPT_BYTES = 220  # ... and per attempt


def estimated_bytes(trace: TaskTrace) -> int:
    """A cheap upper estimate of what a trace holds (for the buffer's byte bound)."""
    return (TRACE_BASE_BYTES + CANDIDATE_BYTES * len(trace.candidates)
            + ATTEMPT_BYTES * len(trace.attempts) + len(trace.error or ""))


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
        if self._gz is not None:
            self._gz.close()
        if self._raw is not None:
            self._raw.close()
        self._gz = self._raw = None

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


def encode_lines(schema: Any, items: list[tuple[str, Any]]) -> tuple[bytes, int, int]:
    """The JSON lines of a batch of ("t", a trace row) and ("d", a telemetry document) items;
    returns (the lines, how many are task lines, how many items could not be encoded).

    orjson, not the standard json module, and one buffer rather than a list of lines: the
    encoding is most of the writer's work, and the writer shares the host's cores with the
    node and the broker (json.dumps and a list of lines cost 3x as much per task). A NaN or
    infinity, which JSON cannot hold, is written as null."""
    head, top, cand, att = schema
    out, tasks, bad = bytearray(), 0, 0
    for kind, item in items:
        if kind == "t":
            doc = dict(head)
            doc.update(zip(top, item[0], strict=True))
            doc["candidates"] = [dict(zip(cand, c, strict=True)) for c in item[1]]
            doc["attempts"] = [dict(zip(att, a, strict=True)) for a in item[2]]
        else:
            doc = item
        try:
            out += orjson.dumps(doc, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except (TypeError, ValueError):  # e.g. an integer past 64 bits, a non-string key
            bad += 1
            continue
        tasks += kind == "t"
    return bytes(out), tasks, bad


def writer_main(conn: Connection, directory: str, node_id: str, max_bytes: int,
                file_bytes: int) -> None:
    """The writer process: batches in, (tasks written, lines lost, error) out, until None.

    It runs at a lower CPU priority than the node (nice +WRITER_NICE): when the host is
    saturated the node's own work goes first, and the writer catches up when it is not (or
    the recorder's buffer fills and drops, counted)."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(WRITER_NICE)
    files = RecordFiles(Path(directory), node_id, max_bytes=max_bytes, file_bytes=file_bytes)
    while True:
        try:
            batch = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            batch = None  # the node went away
        if batch is None:
            files.close()
            return
        schema, items = batch
        lines, tasks, bad = encode_lines(schema, items)
        error = ""
        try:
            files.write(lines)
        except (OSError, ValueError) as exc:
            files.close()
            error, bad, tasks = str(exc), len(items), 0
        try:
            conn.send((tasks, bad, error))
        except (EOFError, OSError):
            files.close()
            return


class Recorder:
    """Trace sink + periodic telemetry snapshots -> record files (see the module docstring).

    `snapshot()` returns the telemetry document to record (the composition root builds it
    over the view, the executor's load and the estimator bank); it runs on the event loop.
    `row_schema` is node/trace.py's ROW_SCHEMA: how the writer process rebuilds a trace's
    record from the plain tuples it is sent."""

    def __init__(self, settings: RecordSettings, *, node_id: str, metrics: Metrics,
                 row_schema: Any, snapshot: Callable[[], dict[str, Any]] | None = None) -> None:
        assert settings.path is not None
        self.settings = settings
        self.metrics = metrics
        self.snapshot = snapshot
        self.node_id = node_id
        self.directory = Path(settings.path)
        self.row_schema = row_schema
        self._buffer: deque[tuple[Any, int]] = deque()  # (trace or telemetry doc, bytes)
        self._buffered = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._restart_at = 0.0
        self.dropped = 0
        self._stopping = False

    # -- the sink (event loop) ----------------------------------------------------------------

    def on_task_finished(self, trace: TaskTrace) -> None:
        # its row now (a few us): plain tuples, so the trace itself is not kept alive
        self._offer(("t", trace.to_row()), estimated_bytes(trace))

    def _offer(self, item: Any, size: int) -> None:
        if self._buffered + size > self.settings.buffer_bytes:
            self.dropped += 1
            self.metrics.record_dropped.labels(reason="buffer_full").inc()
            return
        self._buffer.append((item, size))
        self._buffered += size
        if self._buffered > self.settings.buffer_bytes // 2:
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Recorder:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("record.path %s cannot be created (%s): nothing will be recorded",
                      self.directory, exc.strerror)
        await asyncio.to_thread(self._start_writer)
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
        await asyncio.to_thread(self._ship, self._take())  # what is left
        await asyncio.to_thread(self._stop_writer)

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
            batch = self._take()
            if batch:
                await asyncio.to_thread(self._ship, batch)

    def _record_snapshot(self) -> None:
        if self.snapshot is None:
            return
        try:
            doc = self.snapshot()
            self._offer(doc, 200 + 150 * len(doc.get("neighbours", ())))
        except Exception:  # a snapshot's bug must not stop the recording
            log.exception("telemetry snapshot for the record failed")

    def _take(self) -> list[Any]:
        batch = [item for item, _ in self._buffer]
        self._buffer.clear()
        self._buffered = 0
        return batch

    # -- the writer process (driven from a worker thread) ---------------------------------------

    def _start_writer(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=writer_main, name="edgesched-recorder", daemon=True,
                           args=(child, str(self.directory), self.node_id,
                                 self.settings.max_bytes, self.settings.file_bytes))
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def _stop_writer(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send_bytes(pickle.dumps(None))
            conn.close()
        if proc is not None:
            proc.join(WRITER_EXIT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)

    def _ship(self, batch: list[Any]) -> None:
        """Hand a batch to the writer process and wait for its answer (the thread waits,
        not the event loop; the GIL is free meanwhile)."""
        if not batch:
            return
        items = [("d", item) if isinstance(item, dict) else item for item in batch]
        tasks, lost, error = 0, len(items), ""
        try:
            if self._conn is None or self._proc is None or not self._proc.is_alive():
                raise OSError("the writer process is not running")
            self._conn.send_bytes(pickle.dumps((self.row_schema, items),
                                               protocol=pickle.HIGHEST_PROTOCOL))
            if not self._conn.poll(WRITER_REPLY_S):
                raise OSError(f"the writer process did not answer in {WRITER_REPLY_S:g}s")
            tasks, lost, error = self._conn.recv()
        except (OSError, EOFError, ValueError) as exc:
            error = str(exc)
            self._restart_writer()
        if tasks:
            self.metrics.decisions_recorded.inc(tasks)
        if lost:
            self.metrics.record_dropped.labels(reason="write_error").inc(lost)
            log.warning("record: %d line(s) not written to %s%s", lost, self.directory,
                        f": {error}" if error else "")

    def _restart_writer(self) -> None:
        now = time.monotonic()
        if self._stopping or now < self._restart_at:
            return
        self._restart_at = now + WRITER_RESTART_S
        log.warning("record: restarting the writer process")
        self._stop_writer()
        try:
            self._start_writer()
        except OSError as exc:
            log.error("record: the writer process cannot be started: %s", exc)


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
