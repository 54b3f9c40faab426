"""The signed frame and its verifier: every refusal reason, the clock, nonces, trust, keys."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edgesched.adapters.signing import (
    FRAME_MAGIC,
    SignatureReject,
    Signer,
    Verifier,
    load_private_key,
    load_public_key,
    load_security,
    strip_frame,
    write_node_keypair,
)
from edgesched.errors import KeyFileError, MessageRejected

TOPIC = "edgesched/node/gw-1/telemetry"
BODY = b'{"v":1,"node_id":"gw-1","running":0}'


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for node in ("gw-1", "gw-2"):
        write_node_keypair(node, tmp_path)
    return tmp_path


def signer(keys: Path, node: str, wall: Clock) -> Signer:
    return Signer(node, load_private_key(keys / f"{node}.key"), wall=wall)


def verifier(keys: Path, wall: Clock, **kw: object) -> Verifier:
    trusted = {n: load_public_key(keys / f"{n}.pem") for n in ("gw-1", "gw-2")}
    return Verifier(trusted, max_skew_s=30.0, wall=wall, **kw)  # type: ignore[arg-type]


def reason(fn, *args, **kw) -> SignatureReject:
    with pytest.raises(MessageRejected) as info:
        fn(*args, **kw)
    return info.value.reason


def test_a_signed_message_verifies_and_names_its_signer(keys: Path) -> None:
    wall = Clock()
    frame = signer(keys, "gw-1", wall).sign(TOPIC, BODY)
    assert frame.startswith(FRAME_MAGIC) and frame.endswith(b"\n" + BODY)
    ok = verifier(keys, wall).verify(TOPIC, frame)
    assert ok.body == BODY and ok.signer == "gw-1"


def test_tampering_anywhere_is_a_bad_signature(keys: Path) -> None:
    wall = Clock()
    frame = signer(keys, "gw-1", wall).sign(TOPIC, BODY)
    v = verifier(keys, wall)
    assert reason(v.verify, TOPIC, frame.replace(b'"running":0', b'"running":9')) == (
        SignatureReject.BAD_SIGNATURE)
    # moved to another topic or node: the topic is signed too
    assert reason(v.verify, "edgesched/node/gw-2/telemetry", frame) == SignatureReject.BAD_SIGNATURE
    # claims another signer (gw-2 is trusted, but did not sign this)
    header, body = frame.split(b"\n", 1)
    doc = json.loads(header[len(FRAME_MAGIC):])
    doc["kid"] = "gw-2"
    forged = FRAME_MAGIC + json.dumps(doc).encode() + b"\n" + body
    assert reason(v.verify, TOPIC, forged) == SignatureReject.BAD_SIGNATURE
    # a new timestamp or nonce breaks it as well
    doc = json.loads(header[len(FRAME_MAGIC):])
    doc["n"] = "0" * 16
    assert reason(v.verify, TOPIC, FRAME_MAGIC + json.dumps(doc).encode() + b"\n" + body) == (
        SignatureReject.BAD_SIGNATURE)


def test_an_exact_copy_is_a_replay(keys: Path) -> None:
    wall = Clock()
    frame = signer(keys, "gw-1", wall).sign(TOPIC, BODY)
    v = verifier(keys, wall)
    v.verify(TOPIC, frame)
    wall.now += 5
    assert reason(v.verify, TOPIC, frame) == SignatureReject.REPLAY


def test_old_and_future_messages_are_stale(keys: Path) -> None:
    wall = Clock()
    s, v = signer(keys, "gw-1", wall), verifier(keys, wall)
    frame = s.sign(TOPIC, BODY)
    wall.now += 31
    assert reason(v.verify, TOPIC, frame) == SignatureReject.STALE
    wall.now -= 62  # the signer's clock is now 31 s ahead of ours
    assert reason(v.verify, TOPIC, frame) == SignatureReject.STALE
    wall.now += 31 + 29  # within the skew: fine
    assert v.verify(TOPIC, frame).signer == "gw-1"


def test_unsigned_unknown_and_malformed(keys: Path, tmp_path: Path) -> None:
    wall = Clock()
    v = verifier(keys, wall)
    assert reason(v.verify, TOPIC, BODY) == SignatureReject.UNSIGNED
    write_node_keypair("evil", tmp_path / "elsewhere")
    evil = Signer("evil", load_private_key(tmp_path / "elsewhere" / "evil.key"), wall=wall)
    assert reason(v.verify, TOPIC, evil.sign(TOPIC, BODY)) == SignatureReject.UNKNOWN_SIGNER
    for bad in (FRAME_MAGIC + b"{not json\n{}", FRAME_MAGIC + b"[]\n{}",
                FRAME_MAGIC + b'{"kid":"gw-1","ts":1.5,"n":"00000000","sig":"AA=="}\n{}',
                FRAME_MAGIC + b"x" * 600):
        assert reason(v.verify, TOPIC, bad) == SignatureReject.MALFORMED


def test_persistent_documents_may_be_old_and_retained_copies_repeat(keys: Path) -> None:
    """Retained state and Last Wills are handed out long after they were signed."""
    wall = Clock()
    topic = "edgesched/node/gw-1/state"
    frame = signer(keys, "gw-1", wall).sign(topic, BODY)
    v = verifier(keys, wall)
    wall.now += 3600
    assert v.verify(topic, frame, persistent=True, retained=True).signer == "gw-1"
    assert v.verify(topic, frame, persistent=True, retained=True).signer == "gw-1"
    # a live (not retained) copy is checked for replay
    assert v.verify(topic, frame, persistent=True).signer == "gw-1"
    assert reason(v.verify, topic, frame, persistent=True) == SignatureReject.REPLAY
    # never from the future, persistent or not
    wall.now -= 7200
    assert reason(v.verify, topic, frame, persistent=True, retained=True) == SignatureReject.STALE


def test_nonce_memory_is_bounded_and_forgotten_messages_are_refused(keys: Path) -> None:
    wall = Clock()
    s = signer(keys, "gw-1", wall)
    v = verifier(keys, wall, max_nonces=10)
    frames = []
    for _ in range(30):
        frames.append(s.sign(TOPIC, BODY))
        v.verify(TOPIC, frames[-1])
        wall.now += 0.01
    assert len(v._nonces) <= 10
    # the first ones were forgotten while still fresh: they are refused as replays anyway
    assert reason(v.verify, TOPIC, frames[0]) == SignatureReject.REPLAY
    wall.now += 0.01
    assert v.verify(TOPIC, s.sign(TOPIC, BODY)).signer == "gw-1"  # new messages still pass


def test_a_key_added_to_the_trust_dir_is_picked_up(keys: Path) -> None:
    wall = Clock()
    sec = load_security("gw-1", keys / "gw-1.key", keys, max_skew_s=30.0, wall=wall)
    assert sec.verifier.trusted == {"gw-1", "gw-2"}
    write_node_keypair("gw-3", keys)
    gw3 = Signer("gw-3", load_private_key(keys / "gw-3.key"), wall=wall)
    assert sec.verifier.verify(TOPIC, gw3.sign(TOPIC, BODY)).signer == "gw-3"


def test_a_node_trusts_its_own_key_and_refuses_a_mismatched_listing(keys: Path,
                                                                    tmp_path: Path) -> None:
    own_dir = tmp_path / "own"
    write_node_keypair("solo", own_dir)
    trust = tmp_path / "trust"
    trust.mkdir()
    sec = load_security("solo", own_dir / "solo.key", trust, max_skew_s=30.0)
    frame = sec.signer.sign(TOPIC, BODY)
    assert sec.verifier.verify(TOPIC, frame).signer == "solo"
    (trust / "solo.pem").write_bytes((keys / "gw-2.pem").read_bytes())
    with pytest.raises(KeyFileError, match="not the public key"):
        load_security("solo", own_dir / "solo.key", trust, max_skew_s=30.0)


def test_keygen_files(tmp_path: Path) -> None:
    key, pub = write_node_keypair("gw-9", tmp_path / "k")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(KeyFileError, match="exists"):
        write_node_keypair("gw-9", tmp_path / "k")
    write_node_keypair("gw-9", tmp_path / "k", overwrite=True)
    with pytest.raises(KeyFileError, match="node id"):
        write_node_keypair("../etc", tmp_path)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_private_key(pub)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")


def test_strip_frame_leaves_plain_payloads_alone(keys: Path) -> None:
    frame = signer(keys, "gw-1", Clock()).sign(TOPIC, BODY)
    assert strip_frame(frame) == BODY
    assert strip_frame(BODY) == BODY
