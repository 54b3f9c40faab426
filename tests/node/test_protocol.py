"""Wire protocol: submit validation (§4.4), reply shape (§4.5), offload request/reply."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from edgesched.core.model import Outcome, Placement
from edgesched.node import protocol as p

TYPES = frozenset({"echo", "hash"})


def parse(doc: Any, **kw: Any) -> p.SubmitRequest:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return p.parse_submit(raw, max_bytes=kw.get("max_bytes", 4096),
                          max_input_bytes=kw.get("max_input_bytes", 1024), known_types=TYPES)


def test_minimal_submit_gets_an_id() -> None:
    req = parse({"v": 1, "type": "echo", "input": {"a": 1}})
    assert req.generated_id and len(req.id) == 32
    assert req.input == {"a": 1} and req.task_input() == {"a": 1}
    assert req.input_bytes == len(b'{"a":1}')


def test_full_submit() -> None:
    req = parse({"v": 1, "id": "t-1", "type": "hash", "input": None, "deadline_s": 2,
                 "priority": 3, "device_id": "cam-1", "reply_to": "r/1",
                 "correlation_id": "c"})
    assert (req.id, req.deadline_s, req.priority, req.reply_to) == ("t-1", 2.0, 3, "r/1")
    assert req.input is None  # JSON null is a value, not absence


def test_input_b64() -> None:
    req = parse({"type": "echo", "input_b64": base64.b64encode(b"\x00\x01").decode()})
    assert req.input_b64 == b"\x00\x01" and req.input_bytes == 2
    assert req.as_submit()["input_b64"] == "AAE="


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        (b"{not json", p.RejectCode.MALFORMED, "not valid UTF-8 JSON"),
        (b"\xff\xfe", p.RejectCode.MALFORMED, "UTF-8"),
        (b'{"type": "echo", "input": NaN}', p.RejectCode.MALFORMED, "NaN"),
        (b'{"type": "echo", "input": 1e999}', p.RejectCode.MALFORMED, "range"),
        (b"[1]", p.RejectCode.SCHEMA, "must be a JSON object"),
        (b"x" * 5000, p.RejectCode.OVERSIZE, "limit is 4096"),
        ({"type": "nope"}, p.RejectCode.UNKNOWN_TYPE, "unknown task type 'nope'"),
        ({"type": 3}, p.RejectCode.SCHEMA, "type must be a non-empty string"),
        ({"v": 2, "type": "echo"}, p.RejectCode.SCHEMA, "v must be 1"),
        ({"v": True, "type": "echo"}, p.RejectCode.SCHEMA, "v must be 1"),
        ({"type": "echo", "id": ""}, p.RejectCode.SCHEMA, "id must be"),
        ({"type": "echo", "id": 7}, p.RejectCode.SCHEMA, "id must be"),
        ({"type": "echo", "deadline_s": -1}, p.RejectCode.SCHEMA, "deadline_s must be within"),
        ({"type": "echo", "deadline_s": "1"}, p.RejectCode.SCHEMA, "deadline_s must be a"),
        ({"type": "echo", "priority": 1.5}, p.RejectCode.SCHEMA, "priority"),
        ({"type": "echo", "device_id": "a b"}, p.RejectCode.SCHEMA, "device_id"),
        ({"type": "echo", "reply_to": "a/#"}, p.RejectCode.SCHEMA, "reply_to"),
        ({"type": "echo", "dedline_s": 1}, p.RejectCode.SCHEMA, r"unknown field\(s\) dedline_s"),
        ({"type": "echo", "input": 1, "input_b64": ""}, p.RejectCode.SCHEMA, "not both"),
        ({"type": "echo", "input_b64": "***"}, p.RejectCode.SCHEMA, "base64"),
        ({"type": "echo", "input": "x" * 2000}, p.RejectCode.OVERSIZE, "input is 2002 bytes"),
    ],
)
def test_bad_submissions_say_what_is_wrong(payload: Any, reason: p.RejectCode,
                                           fragment: str) -> None:
    with pytest.raises(p.SubmissionError, match=fragment) as info:
        parse(payload)
    assert info.value.reason is reason


def test_rejection_keeps_reply_routing() -> None:
    with pytest.raises(p.SubmissionError) as info:
        parse({"id": "x1", "type": "nope", "reply_to": "back", "correlation_id": "c9"})
    assert (info.value.task_id, info.value.reply_to, info.value.correlation_id) == (
        "x1", "back", "c9")


def test_reply_has_exactly_the_contract_fields() -> None:
    reply = p.Reply(id="a", status=p.Status.OK, result={"x": 1}, placement=Placement.CLOUD,
                    executed_by="cloud-1", latency_s=0.0123456789, attempts=2)
    assert reply.to_dict() == {"v": 1, "id": "a", "status": "ok", "result": {"x": 1},
                               "placement": "cloud", "executed_by": "cloud-1",
                               "latency_s": 0.012346, "attempts": 2}
    rejected = p.Reply(id="b", status=p.Status.REJECTED, error="bad", correlation_id="c")
    assert rejected.to_dict() == {"v": 1, "id": "b", "status": "rejected", "error": "bad",
                                  "placement": None, "executed_by": None, "latency_s": 0.0,
                                  "attempts": 0, "correlation_id": "c"}
    assert p.Reply(id="n", status=p.Status.OK, result=None).to_dict()["result"] is None


def test_offload_round_trip() -> None:
    task = parse({"id": "t", "type": "hash", "input": {"data": "x", "rounds": 1}})
    doc = p.offload_request_doc(task, origin="gw-1", reply_to="P/node/gw-1/offload-reply",
                                correlation_id="t#1", deadline_s=0.5, expected_s=0.1)
    req = p.parse_offload(p.encode(doc), max_bytes=4096, max_input_bytes=1024,
                          known_types=TYPES)
    assert (req.origin, req.hop, req.expected_s, req.task.deadline_s) == ("gw-1", 1, 0.1, 0.5)
    assert req.task.correlation_id == "t#1" and req.task.input == task.input
    reply = p.OffloadReply(id="t", correlation_id="t#1", status=p.Status.OK, result=[1],
                           executed_by="gw-2", wait_s=0.01, exec_s=0.02)
    back = p.parse_offload_reply(p.encode(reply.to_dict()), max_bytes=4096)
    assert back == reply


def test_offload_without_routing_is_rejected() -> None:
    doc = {"id": "t", "type": "echo", "origin": "gw-1", "hop": 1}
    with pytest.raises(p.SubmissionError, match="reply_to and correlation_id"):
        p.parse_offload(p.encode(doc), max_bytes=4096, max_input_bytes=1024, known_types=TYPES)


def test_parse_reply_from_cloud() -> None:
    reply = p.parse_reply({"v": 1, "id": "a", "status": "failed", "error": "x",
                           "placement": "local", "executed_by": "c", "latency_s": 0.5,
                           "attempts": 1})
    assert (reply.status, reply.error, reply.latency_s) == (p.Status.FAILED, "x", 0.5)
    with pytest.raises(p.SubmissionError):
        p.parse_reply({"status": "weird", "id": "a"})


def test_one_status_mapping_from_outcomes() -> None:
    assert {o: p.to_status(o) for o in Outcome} == {
        Outcome.OK: p.Status.OK, Outcome.REJECTED: p.Status.REJECTED,
        Outcome.INVALID: p.Status.REJECTED, Outcome.FAILED: p.Status.FAILED,
        Outcome.TIMEOUT: p.Status.FAILED, Outcome.EXPIRED: p.Status.EXPIRED,
    }
    for status in p.Status:  # a remote reply's status is the outcome of the same name
        assert p.to_outcome(status).value == status.value
        assert p.to_status(p.to_outcome(status)) is status


def test_an_encoded_message_holds_no_more_memory_than_its_length() -> None:
    """Encoded replies are kept (the pipeline's repeat cache): each must cost about its own
    length, not the 4 KB buffer orjson returns its output in (40 MB more under load)."""
    import tracemalloc

    doc = {"v": 1, "id": "9b02e27762e04acc85937434d0af8bc0", "status": "ok", "result": 123,
           "placement": "local", "executed_by": "gw-1", "latency_s": 0.010667}
    tracemalloc.start()
    try:
        kept = [p.encode(doc) for _ in range(2000)]
        held = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert held < 2 * len(kept[0]) + 100, (held, len(kept[0]))
