"""Telemetry on the wire: node state and telemetry documents, device payloads (JSON objects,
SenML packs) and config-mapped foreign payloads, parsed into the view's validated records.

Pure functions: no asyncio, no MQTT, no metrics. Parsing is strict and cheap to reject: the
size is checked before any parsing, every number must be finite and, for the names the cost
model recognises (`RECOGNISED_RANGES`), in range. A payload that is not accepted raises
`TelemetryRejected` (errors.py) with a bounded `reason` (the label of
`edgesched_telemetry_rejected_total`); the telemetry stage (node/telemetry.py) counts it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edgesched.config import DeviceMapping
from edgesched.core.view import RECOGNISED_RANGES, NodeAnnouncement, NodeTelemetry
from edgesched.errors import TelemetryRejected

MAX_NAMES_PER_DEVICE = 64
MAX_NAME_LENGTH = 64
MAX_TASK_TYPES = 256
MIN_SPEED, MAX_SPEED = 1e-3, 1e6  # a node's announced relative speed
SENML_RELATIVE_LIMIT = 2**28  # RFC 8428 §4.5.3: smaller times are relative to "now"

# SenML units converted into the unit a recognised name is kept in.
_UNIT_SCALE: dict[tuple[str, str], float] = {
    ("battery", "%EL"): 0.01,
    ("battery", "%"): 0.01,
    ("rtt_s", "ms"): 0.001,
    ("uplink_bps", "B/s"): 8.0,
    ("uplink_bps", "kbit/s"): 1e3,
    ("uplink_bps", "Mbit/s"): 1e6,
}


def _reject_constant(name: str) -> float:
    return float(name)  # NaN/Infinity parse, then fail the finiteness check with a reason


def load_json(payload: bytes, limit: int) -> Any:
    if len(payload) > limit:
        raise TelemetryRejected(
            "oversize", f"{len(payload)} bytes, limit telemetry.max_payload_bytes={limit}")
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TelemetryRejected("malformed", f"not valid JSON: {exc}") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TelemetryRejected("schema", f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any double
        number = math.inf
    if not math.isfinite(number):
        raise TelemetryRejected("not_finite", f"{what} must be finite, got {value!r}")
    return number


def _integer(value: Any, what: str, minimum: int = 0, maximum: int = 1 << 31) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TelemetryRejected("schema", f"{what} must be an integer, got {value!r:.40}")
    if not minimum <= value <= maximum:
        raise TelemetryRejected("out_of_range", f"{what} must be within {minimum}..{maximum}")
    return value


def _in_range(value: float, lo: float, hi: float, what: str) -> float:
    if not lo <= value <= hi:
        raise TelemetryRejected("out_of_range", f"{what}={value!r} is outside {lo}..{hi}")
    return value


def check_value(name: str, value: float) -> float:
    """A finite number, and within the range of a recognised name."""
    bounds = RECOGNISED_RANGES.get(name)
    return value if bounds is None else _in_range(value, bounds[0], bounds[1], name)


def _short_name(full: str) -> str:
    name = full.rstrip(":/").replace("/", ":").rsplit(":", 1)[-1]
    if not name or len(name) > MAX_NAME_LENGTH:
        raise TelemetryRejected("schema", f"measurement name {full!r} is empty or too long")
    return name


def parse_json_object(doc: dict[str, Any]) -> tuple[dict[str, float], float | None, int]:
    """`{"ts"?: number, "<name>": number, ...}` -> (values, ts, samples)."""
    ts = _number(doc["ts"], "ts") if "ts" in doc else None
    values: dict[str, float] = {}
    for key, raw in doc.items():
        if key == "ts":
            continue
        if not key or len(key) > MAX_NAME_LENGTH:
            raise TelemetryRejected("schema", f"measurement name {key!r} is empty or too long")
        values[key] = check_value(key, _number(raw, key))
    if not values:
        raise TelemetryRejected("schema", "no measurement in the object")
    if len(values) > MAX_NAMES_PER_DEVICE:
        raise TelemetryRejected("schema", f"more than {MAX_NAMES_PER_DEVICE} measurement names")
    return values, ts, len(values)


def parse_senml(
    pack: list[Any], *, now_wall: float
) -> tuple[dict[str, float], float | None, int]:
    """A SenML pack (RFC 8428 JSON) -> (latest value per name, latest time, samples).

    Base fields (`bn`, `bt`, `bu`, `bv`) apply to the records that follow them. A record's
    value is `v` (+`bv`) or `vb` (as 1/0); `vs`/`vd` records count as samples but carry no
    number to keep. Times below 2**28 are relative to now (RFC 8428 §4.5.3).
    """
    # Hot path (a pack is often 100+ records): no per-record allocation beyond the values,
    # error messages built only on failure, names resolved once per (bn, n).
    if not pack:
        raise TelemetryRejected("schema", "empty SenML pack")
    bn, bt, bu, bv = "", 0.0, None, 0.0
    values: dict[str, float] = {}
    times: dict[str, float] = {}
    names: dict[tuple[str, str], str] = {}
    latest = -math.inf
    isfinite = math.isfinite
    for i, rec in enumerate(pack):
        if type(rec) is not dict:
            raise TelemetryRejected("schema", f"SenML record {i} is not an object")
        if "bn" in rec:
            bn = rec["bn"] if type(rec["bn"]) is str else _bad(i, "bn")
        if "bt" in rec:
            bt = _senml_number(rec["bt"], i, "bt")
        if "bu" in rec:
            bu = rec["bu"] if type(rec["bu"]) is str else _bad(i, "bu")
        if "bv" in rec:
            bv = _senml_number(rec["bv"], i, "bv")
        n = rec.get("n", "")
        if type(n) is not str:
            _bad(i, "n")
        raw_t = rec.get("t", 0.0)
        t = bt + (raw_t if type(raw_t) is float else _senml_number(raw_t, i, "t"))
        if -SENML_RELATIVE_LIMIT < t < SENML_RELATIVE_LIMIT:
            t += now_wall
        elif not isfinite(t):
            raise TelemetryRejected("not_finite", f"record {i} time must be finite")
        raw = rec.get("v")
        if raw is not None:
            value = (raw if type(raw) is float else _senml_number(raw, i, "v")) + bv
            if not isfinite(value):
                raise TelemetryRejected("not_finite", f"record {i} v must be finite, got {raw!r}")
        elif "vb" in rec:
            if type(rec["vb"]) is not bool:
                _bad(i, "vb")
            value = 1.0 if rec["vb"] else 0.0
        elif "vs" in rec or "vd" in rec or "s" in rec:
            continue
        else:
            raise TelemetryRejected("schema", f"SenML record {i} has no value (v, vb, vs, vd or s)")
        key = (bn, n)
        name = names.get(key)
        if name is None:
            name = names[key] = _short_name(bn + n)
        unit = rec.get("u", bu)
        if unit is not None:
            value *= _UNIT_SCALE.get((name, unit), 1.0)
        if name in RECOGNISED_RANGES:
            value = check_value(name, value)
        if t >= times.get(name, -math.inf):
            values[name] = value
            times[name] = t
            if len(values) > MAX_NAMES_PER_DEVICE:
                raise TelemetryRejected(
                    "schema", f"more than {MAX_NAMES_PER_DEVICE} measurement names")
        if t > latest:
            latest = t
    return values, (latest if latest > -math.inf else None), len(pack)


def _senml_number(value: Any, index: int, field: str) -> float:
    if type(value) is int:  # common (times, counts): convert without building a message
        try:
            return float(value)
        except OverflowError:
            pass
    return _number(value, f"record {index} {field}")


def _bad(index: int, field: str) -> Any:
    raise TelemetryRejected("schema", f"SenML record {index}: field {field!r} has the wrong type")


def parse_device_payload(
    payload: bytes, *, limit: int, now_wall: float
) -> tuple[dict[str, float], float | None, int]:
    """A device telemetry payload (JSON object or SenML pack) -> (values, ts, samples)."""
    doc = load_json(payload, limit)
    if isinstance(doc, dict):
        return parse_json_object(doc)
    if isinstance(doc, list):
        return parse_senml(doc, now_wall=now_wall)
    raise TelemetryRejected("schema", "device telemetry must be a JSON object or a SenML array")


def _header(doc: Any, node_id: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TelemetryRejected("schema", "must be a JSON object")
    if doc.get("v") != 1:
        raise TelemetryRejected("schema", f"unsupported version v={doc.get('v')!r} (expected 1)")
    if doc.get("node_id") != node_id:
        raise TelemetryRejected(
            "schema", f"node_id {doc.get('node_id')!r} does not match the topic")
    return doc


def _incarnation(value: Any, max_incarnation: int) -> int:
    """Incarnations are start times in ms (service.next_incarnation): one beyond `now + skew`
    is refused, so no single message can shadow a node's later runs (e.g. 2**63)."""
    return _integer(value, "incarnation", maximum=max_incarnation)


def parse_node_state(payload: bytes, node_id: str, *, limit: int,
                     max_incarnation: int = 1 << 63) -> NodeAnnouncement:
    """A state document (contract §4.1)."""
    doc = _header(load_json(payload, limit), node_id)
    status = doc.get("status")
    if status not in ("online", "offline"):
        raise TelemetryRejected("schema", f"status must be online or offline, got {status!r}")
    role = doc.get("role", "edge")
    if role not in ("edge", "cloud"):
        raise TelemetryRejected("schema", f"role must be edge or cloud, got {role!r}")
    types = doc.get("task_types", [])
    if not isinstance(types, list) or len(types) > MAX_TASK_TYPES or not all(
        isinstance(t, str) for t in types
    ):
        raise TelemetryRejected("schema", "task_types must be a list of names")
    return NodeAnnouncement(
        incarnation=_incarnation(doc.get("incarnation"), max_incarnation),
        online=status == "online",
        ts=_number(doc.get("ts", 0.0), "ts"),
        role=role,
        task_types=frozenset(types),
        slots=_integer(doc.get("slots", 1), "slots"),
        speed=None if doc.get("speed") is None
        else _in_range(_number(doc["speed"], "speed"), MIN_SPEED, MAX_SPEED, "speed"),
    )


def _optional_fraction(doc: dict[str, Any], key: str) -> float | None:
    raw = doc.get(key)
    return None if raw is None else _in_range(_number(raw, key), 0.0, 1.0, key)


MAX_ECHOES = 64  # entries of a telemetry's `echo` object
MAX_ECHO_HELD_S = 3600.0


def _echo(doc: dict[str, Any], echo_for: str) -> tuple[float, float] | None:
    """The `echo` entry addressed to `echo_for`: [our telemetry's ts, held_ms] (docs/mqtt.md)."""
    echoes = doc.get("echo")
    if echoes is None:
        return None
    if not isinstance(echoes, dict) or len(echoes) > MAX_ECHOES:
        raise TelemetryRejected("schema", f"echo must be an object of at most {MAX_ECHOES} "
                                "node ids")
    entry = echoes.get(echo_for) if echo_for else None
    if entry is None:
        return None
    if not isinstance(entry, list) or len(entry) != 2:
        raise TelemetryRejected("schema", "an echo entry must be [ts, held_ms]")
    held_s = _in_range(_number(entry[1], "echo held_ms"), 0.0, MAX_ECHO_HELD_S * 1000,
                       "echo held_ms") / 1000.0
    return _number(entry[0], "echo ts"), held_s


def parse_node_telemetry(payload: bytes, node_id: str, *, limit: int,
                         max_incarnation: int = 1 << 63, echo_for: str = "") -> NodeTelemetry:
    """A node's periodic telemetry (contract §4.2); `echo` keeps only the entry addressed to
    `echo_for` (this node's id)."""
    doc = _header(load_json(payload, limit), node_id)
    power = doc.get("power_w")
    return NodeTelemetry(
        incarnation=_incarnation(doc.get("incarnation"), max_incarnation),
        ts=_number(doc.get("ts", 0.0), "ts"),
        cpu_util=_in_range(_number(doc.get("cpu_util", 0.0), "cpu_util"), 0.0, 1.0, "cpu_util"),
        running=_integer(doc.get("running", 0), "running"),
        queued=_integer(doc.get("queued", 0), "queued"),
        slots=_integer(doc.get("slots", 1), "slots"),
        est_wait_s=_in_range(_number(doc.get("est_wait_s", 0.0), "est_wait_s"), 0.0, 1e9,
                             "est_wait_s"),
        battery=_optional_fraction(doc, "battery"),
        power_w=None if power is None else _in_range(_number(power, "power_w"), 0, 1e6,
                                                     "power_w"),
        echo=_echo(doc, echo_for),
    )


def _dotted(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(doc, dict) and key in doc:
            doc = doc[key]
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            raise TelemetryRejected("schema", f"field {path!r} not found")
    return doc


def parse_mapped(payload: bytes, mapping: DeviceMapping, *, limit: int) -> float:
    """The value a config mapping (`devices.mappings`) picks out of a foreign payload."""
    if mapping.field is None:
        if len(payload) > limit:
            raise TelemetryRejected("oversize", f"{len(payload)} bytes, limit {limit}")
        try:
            raw: Any = float(payload.decode().strip())
        except (ValueError, UnicodeDecodeError):
            raise TelemetryRejected("malformed", "payload is not a number") from None
    else:
        raw = _dotted(load_json(payload, limit), mapping.field)
    return check_value(mapping.name, _number(raw, mapping.field or "payload") * mapping.scale)
