"""Logging set-up: text or JSON lines on stderr, journald-aware, with node and task ids.

- `text` (default): `2026-12-04T18:05:07.123Z INFO    edgesched.pipeline: message`, a UTC
  ISO 8601 timestamp. Under systemd, when stderr is the journal's stream (`$JOURNAL_STREAM`
  names stderr's device and inode, sd-daemon(3)), the line is `<6>edgesched.pipeline: message`
  instead: the journal stamps the time itself and reads the `<N>` syslog priority.
- `json`: one object per line: `ts` (epoch seconds), `time` (ISO 8601, UTC), `level`,
  `logger`, `msg`, `node_id`, and `task_id` while a task is being handled (`TASK_ID`, a
  context variable the task pipeline and intake set), plus a record's `fields`.
- Third-party loggers live under the `edgesched.` tree or are held at WARNING: paho's own
  lines (aiomqtt hands paho a logger) go to `edgesched.mqtt.paho`, where its transient socket
  errors ("failed to receive on socket") are demoted to DEBUG — the adapter reports the lost
  connection itself, once, at WARNING; aiohttp (its access log included) says only
  warnings and errors.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)

# The task being handled by the current asyncio task (set by intake and pipeline).
TASK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("edgesched_task_id",
                                                                      default=None)
PAHO_LOGGER = "edgesched.mqtt.paho"

# logging level -> syslog priority (sd-daemon(3) `<N>` prefixes)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
# Libraries whose INFO chatter is not the operator's business: WARNING and up only.
_QUIET = ("amqtt", "transitions", "asyncio", "aiohttp", "urllib3", "mqtt")

_node_id: str | None = None


def set_node_id(node_id: str | None) -> None:
    """The node id every log record carries from now on (JSON `node_id`)."""
    global _node_id
    _node_id = node_id


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def iso_utc(created: float) -> str:
    """`2026-12-04T18:05:07.123Z`: ISO 8601 with its zone, to the millisecond."""
    whole = int(created)
    millis = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def journal_stream(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Is `stream` the systemd journal? True when $JOURNAL_STREAM is `DEV:INODE` of its fd
    (the check sd-daemon(3) prescribes: a child that redirected stderr is not the journal)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _ContextFilter(logging.Filter):
    """Adds `node_id` and `task_id` to every record (None when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node_id"):
            record.node_id = _node_id
        if not hasattr(record, "task_id"):
            record.task_id = TASK_ID.get()
        return True


class _PahoFilter(logging.Filter):
    """paho reports every dropped socket at ERROR ("failed to receive on socket: ..."): the
    adapter already logs the lost connection and its reconnects, so these are DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and "on socket" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(PAHO_LOGGER).isEnabledFor(logging.DEBUG)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; under journald prefixed with `<N>` too (the journal strips
    it into PRIORITY, so its MESSAGE is the plain JSON document)."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        node_id = getattr(record, "node_id", None)
        if node_id is not None:
            doc["node_id"] = node_id
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            doc["task_id"] = task_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        line = json.dumps(doc, default=str)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line


class TextFormatter(logging.Formatter):
    """`ISO-TIME LEVEL logger: message [task=ID]`, or under journald `<N>logger: message`."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            text += f" [task {task_id}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journal:
            # one priority per line: the journal reads each line as its own entry
            prefix = f"<{syslog_priority(record.levelno)}>"
            return "\n".join(prefix + line for line in text.splitlines())
        return f"{iso_utc(record.created)} {record.levelname:<7} {text}"


def setup_logging(level: str = "INFO", fmt: str = TEXT, *, node_id: str | None = None,
                  stream: TextIO | None = None) -> None:
    """Structured logs to stderr (`fmt` is `text` or `json`); safe to call again (a reload
    or `run` after the CLI's first set-up replaces the handler)."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    journal = journal_stream(out)
    handler.setFormatter(JsonFormatter(journal=journal) if fmt == JSON
                         else TextFormatter(journal=journal))
    handler.addFilter(_ContextFilter())
    if node_id is not None:
        set_node_id(node_id)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    paho = logging.getLogger(PAHO_LOGGER)
    if not any(isinstance(f, _PahoFilter) for f in paho.filters):
        paho.addFilter(_PahoFilter())


def set_level(level: str) -> None:
    """The root level (log.level / --log-level); noisy libraries stay at WARNING or above."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # paho's own debug lines only when the operator asked for DEBUG
    logging.getLogger(PAHO_LOGGER).setLevel(root.level if root.level <= logging.DEBUG
                                            else logging.INFO)


@contextlib.contextmanager
def task_context(task_id: str | None) -> Iterator[None]:
    """`with task_context(task_id):` log lines inside carry `task_id` (for code that handles
    several tasks in one asyncio task; a task's own asyncio task sets TASK_ID directly)."""
    token = TASK_ID.set(task_id)
    try:
        yield
    finally:
        TASK_ID.reset(token)
