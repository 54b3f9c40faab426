"""The durable spool: `state_dir/spool.sqlite` (stdlib sqlite3, WAL).

It keeps two things across a crash or restart of the node:

- **tasks**: an accepted MQTT submission (its raw payload and its reply route), recorded
  before the broker gets its PUBACK and removed when its terminal reply is recorded;
- **replies**: a terminal reply with its route, recorded until the broker acknowledges its
  publish (QoS 1 PUBACK), so a reply that cannot be published while the broker is away goes
  out on the next connect, or after the next start.

The pipeline asks it (intake records and completes; service resumes what is left at start);
it never reaches into the pipeline. HTTP submissions are never spooled: the client's
connection dies with the node, there is nobody to answer after a restart.

Durability: `journal_mode=WAL`, `synchronous=NORMAL`. In WAL mode NORMAL commits without an
fsync: a committed row survives the process being killed (SIGKILL, OOM, a crash: the WAL is
in the OS page cache), and the last commits may be lost only on power loss or a kernel
crash. FULL would fsync every commit (milliseconds on an SD card or a busy disk, one per
task and one per reply) and breaks the spool's budget (<= 1 ms on the local path); a power
cut loses the node's in-memory work anyway, so we take NORMAL for tasks and replies alike.

Bounded: `max_bytes` (the payloads it holds) and `reply_ttl_s` (a reply older than that is
given up). Whatever is not kept is counted in `edgesched_spool_shed_total{reason}` and
logged, never silent: `full` (over max_bytes: the task runs unspooled), `ttl`, and
`write_error` (disk full, I/O error: the task still runs and is answered, unspooled).

The calls are synchronous and small (one indexed row per call, no fsync): measured at
~20-60 us on the benchmark box (benchmarks/bench_spool.py), cheaper than a hop to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgesched.errors import ConfigError

if TYPE_CHECKING:
    from edgesched.adapters.metrics import Metrics

log = logging.getLogger("edgesched.spool")

FILENAME = "spool.sqlite"
ROW_OVERHEAD_BYTES = 128  # a row's key, route and sqlite bookkeeping, roughly

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    response_topic TEXT,
    correlation_data BLOB,
    recorded REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    correlation_data BLOB,
    payload BLOB NOT NULL,
    recorded REAL NOT NULL,
    size INTEGER NOT NULL
);
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class SpooledTask:
    key: str
    type: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    recorded: float  # wall clock (time.time)


@dataclass(frozen=True, kw_only=True, slots=True)
class SpooledReply:
    key: str
    topic: str
    correlation_data: bytes | None
    payload: bytes
    recorded: float


class Spool:
    """One node's spool file; open with `Spool.open(state_dir, ...)`, close with `close()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, max_bytes: int,
                 reply_ttl_s: float, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self.path = path
        self.max_bytes = max_bytes
        self.reply_ttl_s = reply_ttl_s
        self._metrics = metrics
        self._clock = clock
        self._tasks: dict[str, int] = dict(conn.execute("SELECT key, size FROM tasks"))
        self._replies: dict[str, int] = dict(conn.execute("SELECT key, size FROM replies"))
        self.bytes = sum(self._tasks.values()) + sum(self._replies.values())
        self.shed: dict[str, int] = {}
        self._last_error_log = 0.0
        self._acked: list[str] = []  # replies the broker took, deleted together (one commit)
        if metrics is not None:
            metrics.spool_tasks.set_function(lambda: len(self._tasks))
            metrics.spool_replies.set_function(lambda: len(self._replies))

    @classmethod
    def open(cls, state_dir: Path, *, max_bytes: int, reply_ttl_s: float,
             metrics: Metrics | None = None,
             clock: Callable[[], float] = time.time) -> Spool:
        """Open (or create) `state_dir/spool.sqlite`. A corrupt or unwritable file is a
        ConfigError naming `state_dir` (exit 78), never a crash loop."""
        path = state_dir / FILENAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError([("state_dir", f"cannot open the spool {path}: {exc} (make "
                                "state_dir a writable directory)")]) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else '?'}")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")  # proves it is writable now, not at the 1st task
            conn.execute("COMMIT")
            spool = cls(conn, path, max_bytes=max_bytes, reply_ttl_s=reply_ttl_s,
                        metrics=metrics, clock=clock)
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError([("state_dir", f"the spool {path} is unusable: {exc}; if it is "
                                "corrupt, move it away (its unfinished tasks are lost) and "
                                "start again")]) from None
        return spool

    def close(self) -> None:
        self.flush_acked()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # -- counts ------------------------------------------------------------------------------

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    @property
    def reply_count(self) -> int:
        return len(self._replies)

    def has_task(self, key: str) -> bool:
        return key in self._tasks

    def has_reply(self, key: str) -> bool:
        return key in self._replies

    def _shed(self, reason: str, what: str, key: str, detail: str = "") -> None:
        self.shed[reason] = self.shed.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.spool_shed.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self._last_error_log >= 10.0 or reason == "ttl":
            self._last_error_log = now
            log.warning("spool: %s %s not kept (%s)%s", what, key, reason,
                        f": {detail}" if detail else "")

    def _fits(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    # -- tasks -------------------------------------------------------------------------------

    def record_task(self, key: str, task_type: str, payload: bytes, *,
                    response_topic: str | None, correlation_data: bytes | None) -> bool:
        """Record an accepted task; False (counted) when it was not kept: it then runs and
        is answered unspooled."""
        size = len(payload) + len(response_topic or "") + len(correlation_data or b"") + (
            ROW_OVERHEAD_BYTES)
        old = self._tasks.get(key, 0)
        if not self._fits(size - old):
            self._shed("full", "task", key, f"spool.max_bytes={self.max_bytes}")
            return False
        try:
            self._write("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, task_type, payload, response_topic, correlation_data,
                         self._clock(), size))
        except sqlite3.Error as exc:
            self._shed("write_error", "task", key, str(exc))
            return False
        self._tasks[key] = size
        self.bytes += size - old
        return True

    def forget_task(self, key: str) -> None:
        """Drop a task's row without a reply (e.g. answered unspooled)."""
        size = self._tasks.pop(key, None)
        if size is None:
            return
        self.bytes -= size
        try:
            self._write("DELETE FROM tasks WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            log.error("spool: could not delete task %s (%s): a restart may run it again",
                      key, exc)

    def complete(self, key: str, *, topic: str, correlation_data: bytes | None,
                 payload: bytes) -> bool:
        """The task's terminal reply replaces its task row (one transaction). False when the
        reply is not kept (counted): the caller still publishes it, unspooled."""
        size = len(payload) + len(topic) + len(correlation_data or b"") + ROW_OVERHEAD_BYTES
        task_size = self._tasks.get(key, 0)
        keep = self._fits(size - task_size)
        try:
            with self._conn:  # isolation_level None: use an explicit transaction
                self._conn.execute("BEGIN")
                if keep:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
                        (key, topic, correlation_data, payload, self._clock(), size))
                if task_size:
                    self._conn.execute("DELETE FROM tasks WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            self._rollback()
            self._shed("write_error", "reply", key, str(exc))
            # a task row that cannot be deleted would run again after a restart; try alone
            if task_size:
                self.forget_task(key)
            return False
        if task_size:
            del self._tasks[key]
            self.bytes -= task_size
        if not keep:
            self._shed("full", "reply", key, f"spool.max_bytes={self.max_bytes}")
            return False
        self.bytes += size - self._replies.get(key, 0)
        self._replies[key] = size
        return True

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """One statement; on a full disk, checkpoint (and truncate) the WAL once and retry:
        rows deleted since the last checkpoint free their room only then."""
        try:
            self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            self._rollback()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute(sql, params)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def forget_reply(self, key: str) -> None:
        """The broker acknowledged the reply: drop its row. Inside an event loop the delete
        is batched with the other PUBACKs of the same loop iteration (one commit for many:
        the spool's largest saving under load); a crash before that commit resends them
        after the restart (a duplicate, never a loss)."""
        size = self._replies.pop(key, None)
        if size is None:
            return
        self.bytes -= size
        self._acked.append(key)
        if len(self._acked) > 1:
            return  # a flush is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush_acked)
        except RuntimeError:  # no loop: at once
            self.flush_acked()

    def flush_acked(self) -> None:
        """Delete the rows of the replies acknowledged since the last flush."""
        keys, self._acked = self._acked, []
        if not keys:
            return
        try:
            for i in range(0, len(keys), 500):  # under sqlite's limit of bound parameters
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                self._write(f"DELETE FROM replies WHERE key IN ({marks})", tuple(chunk))
        except sqlite3.Error as exc:
            log.error("spool: could not delete %d sent reply(ies) (%s): a restart may send "
                      "them again", len(keys), exc)

    # -- reading back ------------------------------------------------------------------------

    def pending_tasks(self) -> list[SpooledTask]:
        """Every unfinished task, oldest first."""
        rows = self._conn.execute(
            "SELECT key, type, payload, response_topic, correlation_data, recorded FROM tasks "
            "ORDER BY recorded").fetchall()
        return [SpooledTask(key=k, type=t, payload=bytes(pl), response_topic=rt,
                            correlation_data=None if cd is None else bytes(cd), recorded=rec)
                for k, t, pl, rt, cd, rec in rows]

    def pending_replies(self) -> list[SpooledReply]:
        """Every reply still to publish, oldest first; those past `reply_ttl_s` are given up
        (counted `ttl`) and not returned."""
        self.flush_acked()
        self.expire()
        rows = self._conn.execute(
            "SELECT key, topic, correlation_data, payload, recorded FROM replies "
            "ORDER BY recorded").fetchall()
        return [SpooledReply(key=k, topic=t, correlation_data=None if cd is None else bytes(cd),
                             payload=bytes(pl), recorded=rec) for k, t, cd, pl, rec in rows]

    def expire(self) -> int:
        """Give up replies older than `reply_ttl_s`; returns how many."""
        cutoff = self._clock() - self.reply_ttl_s
        try:
            old = [k for (k,) in self._conn.execute(
                "SELECT key FROM replies WHERE recorded < ?", (cutoff,))]
        except sqlite3.Error as exc:
            log.warning("spool: could not read replies: %s", exc)
            return 0
        for key in old:
            self.forget_reply(key)
            self._shed("ttl", "reply", key, f"older than spool.reply_ttl_s={self.reply_ttl_s:g}")
        self.flush_acked()
        return len(old)
