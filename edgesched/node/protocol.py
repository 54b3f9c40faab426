"""Task messages on the wire: submit requests, replies, and node-to-node offload request/reply.

Parsing is strict and never raises anything but `SubmissionError` (with a bounded `reason`
code for metrics and a message that says what was wrong); encoding is compact UTF-8 JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

import orjson

from edgesched.core.model import Outcome, Placement
from edgesched.errors import InvalidTaskError

VERSION = 1
MAX_ID_CHARS = 128
MAX_TOPIC_CHARS = 512
MAX_CORRELATION_CHARS = 256
MAX_DEADLINE_S = 86_400.0
PRIORITY_RANGE = (-1000, 1000)

_DEVICE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBMIT_FIELDS = frozenset({
    "v", "id", "type", "input", "input_b64", "deadline_s", "priority", "device_id",
    "reply_to", "correlation_id", "sent_at",
})
_OFFLOAD_FIELDS = _SUBMIT_FIELDS | {"origin", "hop", "expected_s", "attempt"}
_CANCEL_FIELDS = frozenset({"v", "id", "origin", "attempt", "correlation_id"})
MAX_ATTEMPT_CHARS = 64
# How far the sender's wall clock may be off ours before `sent_at` is believed: a request seen
# later than this after it was sent (a frozen receiver, a queue at the broker) has that much
# less time left; below it, only the relative `deadline_s` counts (clocks never agree exactly).
SENT_AT_TOLERANCE_S = 1.0
_OFFLOAD_REPLY_FIELDS = frozenset({
    "v", "id", "correlation_id", "status", "result", "result_b64", "error", "executed_by",
    "wait_s", "exec_s",
})


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


# How an attempt or task ended -> the status its reply carries (the one mapping; every
# Status is also the Outcome of the same name).
_STATUS_OF: dict[Outcome, Status] = {
    Outcome.OK: Status.OK,
    Outcome.REJECTED: Status.REJECTED,
    Outcome.INVALID: Status.REJECTED,  # the input is wrong: refused, not failed
    Outcome.FAILED: Status.FAILED,
    Outcome.TIMEOUT: Status.FAILED,
    Outcome.EXPIRED: Status.EXPIRED,
}


def to_status(outcome: Outcome) -> Status:
    """The wire status of a reply for a task or attempt that ended with `outcome`."""
    return _STATUS_OF[outcome]


def to_outcome(status: Status) -> Outcome:
    """The outcome a remote reply reports (the wire statuses are a subset of the outcomes)."""
    return Outcome(status.value)


class RejectCode(StrEnum):
    """Bounded reasons a submission is refused (the `reason` label of tasks_rejected)."""

    MALFORMED = "malformed"
    SCHEMA = "schema"
    OVERSIZE = "oversize"
    UNKNOWN_TYPE = "unknown_type"
    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    NO_TARGET = "no_target"
    SHUTTING_DOWN = "shutting_down"
    REPLY_TOPIC = "reply_topic"  # the reply route is not allowed (intake.reply_topics)
    OVERLOADED = "overloaded"  # shed unread: the node is behind (intake.shed_after_s)


class SubmissionError(InvalidTaskError):
    """A submission that cannot be taken; `reason` is a RejectCode, `task_id` when known."""

    def __init__(self, reason: RejectCode, message: str, *, task_id: str | None = None,
                 reply_to: str | None = None, correlation_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.task_id = task_id
        self.reply_to = reply_to
        self.correlation_id = correlation_id


class _Missing:
    """Marks an absent `result`/`input` (JSON null is a value, absence is not)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True, kw_only=True, slots=True)
class SubmitRequest:
    """A validated submission (§4.4); `input` is MISSING when the body carried none."""

    id: str
    type: str
    input: Any = MISSING
    input_b64: bytes | None = None
    deadline_s: float | None = None
    priority: int = 0
    device_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    input_bytes: int = 0
    generated_id: bool = False
    sent_at_ms: int | None = None  # the sender's wall clock when it sent it (`sent_at`)

    def task_input(self) -> Any:
        """What the handler receives: the JSON input, else the base64 input as text, else null."""
        if self.input is not MISSING:
            return self.input
        if self.input_b64 is not None:
            return base64.b64encode(self.input_b64).decode("ascii")
        return None

    def wire_input(self) -> dict[str, Any]:
        if self.input is not MISSING:
            return {"input": self.input}
        if self.input_b64 is not None:
            return {"input_b64": base64.b64encode(self.input_b64).decode("ascii")}
        return {}

    def as_submit(self, *, deadline_s: float | None = None,
                  sent_at_ms: int | None = None) -> dict[str, Any]:
        """The body to forward (e.g. to the cloud), with the deadline that is left and the
        time it is sent (our wall clock, ms)."""
        doc: dict[str, Any] = {"v": VERSION, "id": self.id, "type": self.type,
                               **self.wire_input(), "priority": self.priority}
        if deadline_s is not None:
            doc["deadline_s"] = deadline_s
        if sent_at_ms is not None:
            doc["sent_at"] = sent_at_ms
        if self.device_id is not None:
            doc["device_id"] = self.device_id
        return doc


@dataclass(frozen=True, kw_only=True, slots=True)
class OffloadRequest:
    """A task handed by `origin` to a neighbour, which runs it locally or rejects it."""

    task: SubmitRequest
    origin: str
    hop: int
    expected_s: float | None = None
    attempt: str | None = None  # unique per attempt of the task at its origin

    @property
    def key(self) -> tuple[str, str, str]:
        """What a receiver deduplicates by: (origin, task id, attempt); an origin that sends
        no `attempt` is keyed by its correlation id (also unique per attempt)."""
        return (self.origin, self.task.id, self.attempt or self.task.correlation_id or "")


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelRequest:
    """An origin gave up on one attempt: drop it if it has not started."""

    id: str
    origin: str
    attempt: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.origin, self.id, self.attempt)

    def to_dict(self) -> dict[str, Any]:
        return {"v": VERSION, "id": self.id, "origin": self.origin, "attempt": self.attempt}


def late_s(sent_at_ms: int | None, now_ms: int,
           tolerance_s: float = SENT_AT_TOLERANCE_S) -> float:
    """How long ago (s) a message stamped `sent_at_ms` was sent, beyond `tolerance_s` of clock
    disagreement; 0 without a stamp, or seen within the tolerance (or "before" it was sent)."""
    if sent_at_ms is None:
        return 0.0
    age = (now_ms - sent_at_ms) / 1000.0
    return age if age > tolerance_s else 0.0


def time_left(deadline_s: float | None, sent_at_ms: int | None, now_ms: int,
              tolerance_s: float = SENT_AT_TOLERANCE_S) -> float | None:
    """The deadline left on arrival: `deadline_s - (now - sent_at)` once the lateness passes
    the tolerance, else `deadline_s`; None without a deadline. <= 0: its time is up."""
    if deadline_s is None:
        return None
    return deadline_s - late_s(sent_at_ms, now_ms, tolerance_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """The terminal reply of one task (§4.5); `correlation_id` only on the reply_to path."""

    id: str
    status: Status
    result: Any = MISSING
    result_b64: str | None = None
    error: str | None = None
    placement: Placement | None = None
    executed_by: str | None = None
    latency_s: float = 0.0
    attempts: int = 0
    correlation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": VERSION, "id": self.id, "status": self.status.value}
        if self.result is not MISSING:
            doc["result"] = self.result
        if self.result_b64 is not None:
            doc["result_b64"] = self.result_b64
        if self.error is not None:
            doc["error"] = self.error
        doc["placement"] = self.placement.value if self.placement else None
        doc["executed_by"] = self.executed_by
        doc["latency_s"] = round(self.latency_s, 6)
        doc["attempts"] = self.attempts
        if self.correlation_id is not None:
            doc["correlation_id"] = self.correlation_id
        return doc

    def encode(self) -> bytes:
        return encode(self.to_dict())


@dataclass(frozen=True, kw_only=True, slots=True)
class OffloadReply:
    """A neighbour's answer to one offload attempt, matched by `correlation_id`."""

    id: str
    correlation_id: str
    status: Status
    result: Any = MISSING
    error: str | None = None
    executed_by: str | None = None
    wait_s: float = 0.0
    exec_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": VERSION, "id": self.id,
                               "correlation_id": self.correlation_id,
                               "status": self.status.value, "executed_by": self.executed_by,
                               "wait_s": round(self.wait_s, 6), "exec_s": round(self.exec_s, 6)}
        if self.result is not MISSING:
            doc["result"] = self.result
        if self.error is not None:
            doc["error"] = self.error
        return doc


def encode(doc: Any) -> bytes:
    """A message's JSON (orjson: 0.3 us for a reply against the json module's 3 us, and every
    reply goes through here). A non-finite float, which JSON cannot hold, is written as null;
    what orjson refuses (an integer past 64 bits) is written by the json module, which refuses
    only what JSON has no form for (ValueError/TypeError).

    Copied out of orjson's buffer: orjson returns its bytes in an allocation of at least
    4 KB, and replies are kept (the pipeline's repeat cache): 40 MB more at 2,400 tasks/s."""
    try:
        return bytes(memoryview(orjson.dumps(doc)))
    except TypeError:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def new_task_id() -> str:
    return uuid.uuid4().hex


# -- parsing -------------------------------------------------------------------------------


def decode_object(payload: bytes, *, max_bytes: int) -> dict[str, Any]:
    """The payload as a JSON object, or a SubmissionError (oversize / malformed / schema)."""
    if len(payload) > max_bytes:
        raise SubmissionError(RejectCode.OVERSIZE,
                              f"message is {len(payload)} bytes, the limit is {max_bytes}")
    try:
        doc = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise SubmissionError(RejectCode.MALFORMED, f"not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise SubmissionError(RejectCode.MALFORMED, "JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise SubmissionError(RejectCode.SCHEMA, "a submission must be a JSON object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} is out of the range of a float")
    return value


def parse_submit(
    payload: bytes | dict[str, Any],
    *,
    max_bytes: int,
    max_input_bytes: int,
    known_types: frozenset[str] | set[str],
    extra_fields: frozenset[str] = frozenset(),
) -> SubmitRequest:
    """A validated SubmitRequest, or SubmissionError saying what was wrong."""
    doc = payload if isinstance(payload, dict) else decode_object(payload, max_bytes=max_bytes)
    # Pick up reply routing first so even a rejection can be answered.
    reply_to = _opt_str(doc, "reply_to", MAX_TOPIC_CHARS, soft=True)
    correlation = _opt_str(doc, "correlation_id", MAX_CORRELATION_CHARS, soft=True)
    raw_id = doc.get("id")
    task_id = raw_id if isinstance(raw_id, str) and _valid_id(raw_id) else None
    try:
        return _parse_fields(doc, max_input_bytes, known_types, extra_fields)
    except SubmissionError as exc:
        exc.task_id, exc.reply_to, exc.correlation_id = task_id, reply_to, correlation
        raise


def submit_routing(payload: bytes, *, max_bytes: int
                   ) -> tuple[str | None, str | None, str | None, str | None]:
    """(id, reply_to, correlation_id, type) of a submission, read without checking the rest:
    what answering a refusal needs (all None when the body is not a JSON object)."""
    try:
        doc = decode_object(payload, max_bytes=max_bytes)
    except SubmissionError:
        return None, None, None, None
    raw_id, raw_type = doc.get("id"), doc.get("type")
    return (raw_id if isinstance(raw_id, str) and _valid_id(raw_id) else None,
            _opt_str(doc, "reply_to", MAX_TOPIC_CHARS, soft=True),
            _opt_str(doc, "correlation_id", MAX_CORRELATION_CHARS, soft=True),
            raw_type if isinstance(raw_type, str) else None)


def _parse_fields(doc: dict[str, Any], max_input_bytes: int, known: frozenset[str] | set[str],
                  extra: frozenset[str]) -> SubmitRequest:
    unknown = sorted(str(k) for k in doc if k not in _SUBMIT_FIELDS and k not in extra)
    if unknown:
        _schema(f"unknown field(s) {', '.join(unknown)}")
    version = doc.get("v", VERSION)  # a missing version is read as v1
    if isinstance(version, bool) or version != VERSION:
        _schema(f"v must be {VERSION}, got {version!r}")
    task_id, generated = _task_id(doc.get("id"))
    task_type = doc.get("type")
    if not isinstance(task_type, str) or not task_type:
        _schema("type must be a non-empty string")
    if task_type not in known:
        raise SubmissionError(RejectCode.UNKNOWN_TYPE,
                              f"unknown task type {task_type[:64]!r}; this node runs "
                              f"{', '.join(sorted(known)) or 'nothing'}")
    value, data_b64, size = _input(doc, max_input_bytes)
    return SubmitRequest(
        id=task_id, type=task_type, input=value, input_b64=data_b64,
        deadline_s=_deadline(doc.get("deadline_s")), priority=_priority(doc.get("priority", 0)),
        device_id=_device(doc.get("device_id")),
        reply_to=_opt_str(doc, "reply_to", MAX_TOPIC_CHARS),
        correlation_id=_opt_str(doc, "correlation_id", MAX_CORRELATION_CHARS),
        input_bytes=size, generated_id=generated, sent_at_ms=_sent_at(doc.get("sent_at")),
    )


def _sent_at(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        _schema("sent_at must be the sender's wall clock in integer milliseconds")
    return int(value)


def _schema(message: str) -> NoReturn:
    raise SubmissionError(RejectCode.SCHEMA, message)


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS and value.isprintable()


def _task_id(value: Any) -> tuple[str, bool]:
    if value is None:
        return new_task_id(), True
    if not isinstance(value, str) or not _valid_id(value):
        _schema(f"id must be a printable string of 1..{MAX_ID_CHARS} characters")
    return value, False


def _input(doc: dict[str, Any], limit: int) -> tuple[Any, bytes | None, int]:
    if "input" in doc and "input_b64" in doc:
        _schema("give input or input_b64, not both")
    if "input_b64" in doc:
        raw = doc["input_b64"]
        if not isinstance(raw, str):
            _schema("input_b64 must be a base64 string")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            _schema("input_b64 is not valid base64")
        _check_size(len(data), limit)
        return MISSING, data, len(data)
    if "input" not in doc:
        return MISSING, None, 0
    size = len(encode(doc["input"]))
    _check_size(size, limit)
    return doc["input"], None, size


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise SubmissionError(RejectCode.OVERSIZE, f"input is {size} bytes, the limit is {limit}")


def _deadline(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _schema("deadline_s must be a finite number of seconds")
    if not 0 < value <= MAX_DEADLINE_S:
        _schema(f"deadline_s must be within (0, {MAX_DEADLINE_S:g}], got {value}")
    return float(value)


def _priority(value: Any) -> int:
    low, high = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _schema(f"priority must be an integer within {low}..{high}")
    return int(value)


def _device(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        _schema("device_id must match [A-Za-z0-9_-]{1,64}")
    return str(value)


def _opt_str(doc: dict[str, Any], key: str, limit: int, *, soft: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    ok = isinstance(value, str) and 0 < len(value) <= limit
    if ok and key == "reply_to":
        ok = not any(ch in value for ch in "+#\x00")
    if ok:
        return str(value)
    if soft:
        return None
    what = "an MQTT topic without wildcards" if key == "reply_to" else "a string"
    _schema(f"{key} must be {what} of 1..{limit} characters")


def parse_offload(payload: bytes, *, max_bytes: int, max_input_bytes: int,
                  known_types: frozenset[str] | set[str]) -> OffloadRequest:
    """A neighbour's offload request; `reply_to` and `correlation_id` are required."""
    doc = decode_object(payload, max_bytes=max_bytes)
    task = parse_submit(doc, max_bytes=max_bytes, max_input_bytes=max_input_bytes,
                        known_types=known_types, extra_fields=frozenset(_OFFLOAD_FIELDS))
    origin, hop, expected = doc.get("origin"), doc.get("hop"), doc.get("expected_s")
    attempt = doc.get("attempt")
    error = None
    if task.reply_to is None or task.correlation_id is None or task.generated_id:
        error = "an offload request needs id, reply_to and correlation_id"
    elif not isinstance(origin, str) or not _DEVICE_RE.match(origin):
        error = "origin must be a node id"
    elif isinstance(hop, bool) or not isinstance(hop, int) or hop < 1:
        error = "hop must be an integer >= 1"
    elif expected is not None and (isinstance(expected, bool) or not isinstance(
            expected, int | float) or not math.isfinite(expected) or expected < 0):
        error = "expected_s must be a finite number >= 0"
    elif attempt is not None and not _valid_attempt(attempt):
        error = f"attempt must be a printable string of 1..{MAX_ATTEMPT_CHARS} characters"
    if error:
        raise SubmissionError(RejectCode.SCHEMA, error, task_id=task.id,
                              reply_to=task.reply_to, correlation_id=task.correlation_id)
    return OffloadRequest(task=task, origin=str(origin), hop=int(hop or 1),
                          expected_s=None if expected is None else float(expected),
                          attempt=None if attempt is None else str(attempt))


def _valid_attempt(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ATTEMPT_CHARS and value.isprintable()


def parse_cancel(payload: bytes, *, max_bytes: int) -> CancelRequest:
    """An origin's `cancel` of one attempt, or SubmissionError."""
    doc = decode_object(payload, max_bytes=max_bytes)
    unknown = sorted(str(k) for k in doc if k not in _CANCEL_FIELDS)
    if unknown:
        _schema(f"unknown field(s) {', '.join(unknown)}")
    task_id, origin, attempt = doc.get("id"), doc.get("origin"), doc.get("attempt")
    if not isinstance(task_id, str) or not _valid_id(task_id):
        _schema(f"id must be a printable string of 1..{MAX_ID_CHARS} characters")
    if not isinstance(origin, str) or not _DEVICE_RE.match(origin):
        _schema("origin must be a node id")
    if not _valid_attempt(attempt):
        _schema(f"attempt must be a printable string of 1..{MAX_ATTEMPT_CHARS} characters")
    return CancelRequest(id=task_id, origin=origin, attempt=str(attempt))


def offload_request_doc(task: SubmitRequest, *, origin: str, reply_to: str,
                        correlation_id: str, deadline_s: float | None,
                        expected_s: float | None, attempt: str | None = None,
                        sent_at_ms: int | None = None) -> dict[str, Any]:
    """The offload body: the submit fields with the deadline left and the send time, plus
    origin, hop and the attempt id."""
    doc = task.as_submit(deadline_s=deadline_s, sent_at_ms=sent_at_ms)
    doc.update({"origin": origin, "hop": 1, "reply_to": reply_to,
                "correlation_id": correlation_id})
    if attempt is not None:
        doc["attempt"] = attempt
    if expected_s is not None:
        doc["expected_s"] = round(expected_s, 6)
    return doc


def parse_offload_reply(payload: bytes, *, max_bytes: int) -> OffloadReply:
    doc = decode_object(payload, max_bytes=max_bytes)
    unknown = sorted(str(k) for k in doc if k not in _OFFLOAD_REPLY_FIELDS)
    if unknown:
        _schema(f"unknown field(s) {', '.join(unknown)}")
    try:
        status = Status(str(doc.get("status")))
    except ValueError:
        _schema("status must be ok, failed, rejected or expired")
    task_id, corr = doc.get("id"), doc.get("correlation_id")
    if not isinstance(task_id, str) or not isinstance(corr, str):
        _schema("id and correlation_id must be strings")
    executed_by = doc.get("executed_by")
    error = doc.get("error")
    return OffloadReply(
        id=task_id, correlation_id=corr, status=status, result=doc.get("result", MISSING),
        error=error if isinstance(error, str) else None,
        executed_by=executed_by if isinstance(executed_by, str) else None,
        wait_s=_nonneg(doc.get("wait_s")), exec_s=_nonneg(doc.get("exec_s")),
    )


def _nonneg(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def parse_reply(doc: Any) -> Reply:
    """A reply document (§4.5) from the cloud tier; SubmissionError when it is not one."""
    if not isinstance(doc, dict):
        _schema("a reply must be a JSON object")
    try:
        status = Status(str(doc.get("status")))
    except ValueError:
        _schema("reply status must be ok, failed, rejected or expired")
    task_id = doc.get("id")
    if not isinstance(task_id, str):
        _schema("reply id must be a string")
    error, by = doc.get("error"), doc.get("executed_by")
    b64 = doc.get("result_b64")
    return Reply(
        id=task_id, status=status, result=doc.get("result", MISSING),
        result_b64=b64 if isinstance(b64, str) else None,
        error=error if isinstance(error, str) else None,
        executed_by=by if isinstance(by, str) else None,
        latency_s=_nonneg(doc.get("latency_s")),
        attempts=doc["attempts"] if isinstance(doc.get("attempts"), int) else 1,
    )


# -- topics --------------------------------------------------------------------------------


def submit_topic(prefix: str, node_id: str) -> str:
    return f"{prefix}/node/{node_id}/submit"


def offload_topic(prefix: str, node_id: str) -> str:
    return f"{prefix}/node/{node_id}/offload"


def offload_reply_topic(prefix: str, node_id: str) -> str:
    return f"{prefix}/node/{node_id}/offload-reply"


def cancel_topic(prefix: str, node_id: str) -> str:
    return f"{prefix}/node/{node_id}/cancel"
