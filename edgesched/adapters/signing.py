"""Ed25519 signatures on node-to-node MQTT messages: node keys, the signed frame, verification.

A signed message is the original payload behind a one-line header (docs/security.md):

    ES1 {"kid":"gw-1","ts":1733320000123,"n":"9f0c2a51d7e3b4a8","sig":"<base64>"}\\n<payload>

The signature covers a domain tag, the MQTT topic, the signer's node id (`kid`), the wall-clock
time in milliseconds (`ts`), a random nonce (`n`) and the payload, so a message can neither be
altered, nor moved to another topic or node, nor attributed to another signer. The header is
plain JSON ahead of the payload (no base64 of the body), which works on MQTT 3.1.1 as on v5.

`Verifier.verify` accepts a frame only when its signer is trusted (a `NODE_ID.pem` in
`security.trust_dir`), the signature is valid, the time is within `max_clock_skew_s` and the
nonce was not seen within that window; a refusal raises `MessageRejected` with a bounded
`reason` (the label of `edgesched_messages_rejected_total`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from edgesched.errors import KeyFileError, MessageRejected

# cryptography (~8 MB resident) is imported by the functions that use a key: a node without
# security.key_file never loads it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

FRAME_MAGIC = b"ES1 "
_DOMAIN = b"edgesched-sig-v1\n"
MAX_HEADER_BYTES = 512
NONCE_BYTES = 8
DEFAULT_MAX_NONCES = 65_536  # ~60 messages/s per node for 30 nodes over a 60 s window
TRUST_RESCAN_S = 30.0  # an unknown signer makes the trust directory be read again, this often
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SignatureReject(StrEnum):
    """Why a node-to-node message was dropped (a bounded metric label)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"  # a frame whose header cannot be read
    UNKNOWN_SIGNER = "unknown_signer"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SIGNER = "wrong_signer"  # validly signed, but by another node than it claims to be
    REPLAY = "replay"
    STALE = "stale"


@dataclass(frozen=True, kw_only=True, slots=True)
class Verified:
    """A verified message: the original payload and who signed it."""

    body: bytes
    signer: str


# ---- keys --------------------------------------------------------------------------------
def write_node_keypair(node_id: str, directory: Path, *,
                       overwrite: bool = False) -> tuple[Path, Path]:
    """Write `DIR/NODE_ID.key` (PKCS8 PEM, mode 0600) and `DIR/NODE_ID.pem` (public key)."""
    if not _NODE_ID_RE.match(node_id):
        raise KeyFileError(f"node id {node_id!r} must match [A-Za-z0-9_-]{{1,64}}")
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{node_id}.key", directory / f"{node_id}.pem"
    if not overwrite:
        for path in (key_path, pub_path):
            if path.exists():
                raise KeyFileError(f"{path} exists; remove it or pass --force to replace it")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    tmp = key_path.with_suffix(".key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    os.chmod(tmp, 0o600)  # the umask may have narrowed it further; never wider
    os.replace(tmp, key_path)
    pub_path.write_bytes(public)
    return key_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key (make one with `edgesched keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def load_trust_dir(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every `NODE_ID.pem` in `directory`, keyed by node id; an unusable file is an error."""
    try:
        paths = sorted(directory.glob("*.pem"))
    except OSError as exc:
        raise KeyFileError(f"cannot list {directory}: {exc.strerror}") from None
    keys = {}
    for path in paths:
        if _NODE_ID_RE.match(path.stem):
            keys[path.stem] = load_public_key(path)
    return keys


# ---- the frame ---------------------------------------------------------------------------
def _signed_bytes(topic: str, kid: str, ts_ms: int, nonce: str, body: bytes) -> bytes:
    head = f"{topic}\n{kid}\n{ts_ms}\n{nonce}\n".encode()
    return _DOMAIN + head + body


def split_frame(payload: bytes) -> tuple[dict[str, object], bytes] | None:
    """(header, body) of a signed frame, None for a payload that is not one."""
    if not payload.startswith(FRAME_MAGIC):
        return None
    end = payload.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise MessageRejected(SignatureReject.MALFORMED, "signature header is not terminated")
    try:
        header = json.loads(payload[len(FRAME_MAGIC):end])
    except (ValueError, UnicodeDecodeError):
        raise MessageRejected(SignatureReject.MALFORMED, "signature header is not JSON") from None
    if not isinstance(header, dict):
        raise MessageRejected(SignatureReject.MALFORMED, "signature header is not an object")
    return header, payload[end + 1:]


def strip_frame(payload: bytes) -> bytes:
    """The payload without its signature header (for nodes that do not verify)."""
    try:
        parts = split_frame(payload)
    except MessageRejected:
        return payload
    return payload if parts is None else parts[1]


class Signer:
    """Signs what this node publishes on node-to-node topics."""

    def __init__(self, node_id: str, key: Ed25519PrivateKey, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self._key = key
        self._wall = wall
        self.public_key = key.public_key()

    def sign(self, topic: str, body: bytes) -> bytes:
        ts_ms = int(self._wall() * 1000)
        nonce = os.urandom(NONCE_BYTES).hex()
        sig = self._key.sign(_signed_bytes(topic, self.node_id, ts_ms, nonce, body))
        header = json.dumps({"kid": self.node_id, "ts": ts_ms, "n": nonce,
                             "sig": base64.b64encode(sig).decode("ascii")},
                            separators=(",", ":")).encode()
        return FRAME_MAGIC + header + b"\n" + body


class Verifier:
    """Checks signed frames against the trusted keys, the clock and the nonces seen.

    `persistent=True` (retained state documents and Last Wills) skips the lower time bound and,
    for a retained delivery, the nonce check: the broker legitimately hands those out long after
    they were signed, and again on every subscription. Liveness ordering then rests on the
    sender's incarnation, which the cluster view enforces.
    """

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], *, max_skew_s: float,
                 trust_dir: Path | None = None, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic,
                 max_nonces: int = DEFAULT_MAX_NONCES) -> None:
        self._trusted = dict(trusted)
        self._pinned = dict(trusted)  # kept across rescans of the trust directory (our own key)
        self._trust_dir = trust_dir
        self._skew_ms = int(max_skew_s * 1000)
        self._wall = wall
        self._clock = clock
        self._max_nonces = max_nonces
        self._nonces: OrderedDict[tuple[str, str], int] = OrderedDict()  # -> ts_ms
        self._floor_ms = 0  # a message signed at or before this may be a forgotten replay
        self._rescanned_at = -TRUST_RESCAN_S

    def trust(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        """Add keys (those of the trust directory); pinned ones (our own) always win."""
        self._trusted = dict(keys) | self._pinned

    @property
    def trusted(self) -> frozenset[str]:
        return frozenset(self._trusted)

    def verify(self, topic: str, payload: bytes, *, persistent: bool = False,
               retained: bool = False) -> Verified:
        parts = split_frame(payload)
        if parts is None:
            raise MessageRejected(SignatureReject.UNSIGNED, f"unsigned message on {topic}")
        header, body = parts
        kid, ts_ms, nonce, sig = _header_fields(header)
        key = self._key_of(kid)
        from cryptography.exceptions import InvalidSignature  # loaded with the first key

        try:
            key.verify(sig, _signed_bytes(topic, kid, ts_ms, nonce, body))
        except InvalidSignature:
            raise MessageRejected(SignatureReject.BAD_SIGNATURE,
                                  f"bad signature by {kid} on {topic}") from None
        self._check_fresh(kid, ts_ms, nonce, persistent=persistent, retained=retained)
        return Verified(body=body, signer=kid)

    def _key_of(self, kid: str) -> Ed25519PublicKey:
        key = self._trusted.get(kid)
        if key is None and self._trust_dir is not None:
            now = self._clock()
            if now - self._rescanned_at >= TRUST_RESCAN_S:  # a node added since we started
                self._rescanned_at = now
                # on an unreadable directory keep the keys we had; a later rescan may succeed
                with contextlib.suppress(KeyFileError):
                    self._trusted = load_trust_dir(self._trust_dir) | self._pinned
                key = self._trusted.get(kid)
        if key is None:
            raise MessageRejected(SignatureReject.UNKNOWN_SIGNER,
                                  f"signer {kid!r} is not in the trust directory")
        return key

    def _check_fresh(self, kid: str, ts_ms: int, nonce: str, *, persistent: bool,
                     retained: bool) -> None:
        now_ms = int(self._wall() * 1000)
        if ts_ms > now_ms + self._skew_ms:
            raise MessageRejected(SignatureReject.STALE, f"{kid} signed {ts_ms - now_ms} ms in "
                                  "the future (beyond security.max_clock_skew_s)")
        if not persistent and ts_ms < now_ms - self._skew_ms:
            raise MessageRejected(SignatureReject.STALE, f"{kid} signed {now_ms - ts_ms} ms ago "
                                  "(beyond security.max_clock_skew_s)")
        if persistent and retained:
            return
        key = (kid, nonce)
        if key in self._nonces or (not persistent and ts_ms <= self._floor_ms):
            raise MessageRejected(SignatureReject.REPLAY, f"{kid}'s message was seen before")
        # an old persistent document is remembered from when it arrived, for one window
        self._remember(key, now_ms if persistent else ts_ms, now_ms)

    def _remember(self, key: tuple[str, str], ts_ms: int, now_ms: int) -> None:
        nonces = self._nonces
        nonces[key] = ts_ms
        horizon = now_ms - 2 * self._skew_ms
        while nonces:  # roughly time-ordered: drop what the time check alone now refuses
            first_ts = next(iter(nonces.values()))
            if first_ts >= horizon and len(nonces) <= self._max_nonces:
                break
            _, evicted_ts = nonces.popitem(last=False)
            if evicted_ts >= horizon:  # forgotten while still fresh: refuse anything as old
                self._floor_ms = max(self._floor_ms, evicted_ts)


def _header_fields(header: Mapping[str, object]) -> tuple[str, int, str, bytes]:
    kid, ts_ms, nonce, sig = header.get("kid"), header.get("ts"), header.get("n"), header.get(
        "sig")
    if not isinstance(kid, str) or not _NODE_ID_RE.match(kid):
        raise MessageRejected(SignatureReject.MALFORMED, "signature header: bad kid")
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise MessageRejected(SignatureReject.MALFORMED, "signature header: ts must be an integer")
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= 64:
        raise MessageRejected(SignatureReject.MALFORMED, "signature header: bad nonce")
    if not isinstance(sig, str) or len(sig) > 128:
        raise MessageRejected(SignatureReject.MALFORMED, "signature header: bad sig")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise MessageRejected(SignatureReject.MALFORMED, "signature is not base64") from None
    return kid, ts_ms, nonce, raw


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageSecurity:
    """This node's signer and verifier, built from `security.*` by the composition root."""

    signer: Signer
    verifier: Verifier


def load_security(node_id: str, key_file: Path, trust_dir: Path, *, max_skew_s: float,
                  wall: Callable[[], float] = time.time) -> MessageSecurity:
    """Keys from disk; raises `KeyFileError` saying which file is unusable."""
    key = load_private_key(key_file)
    trusted = load_trust_dir(trust_dir)
    own = key.public_key()
    listed = trusted.get(node_id)
    if listed is not None and listed.public_bytes_raw() != own.public_bytes_raw():
        raise KeyFileError(f"{trust_dir / (node_id + '.pem')} is not the public key of {key_file}")
    verifier = Verifier({node_id: own}, max_skew_s=max_skew_s, trust_dir=trust_dir, wall=wall)
    verifier.trust(trusted)
    return MessageSecurity(signer=Signer(node_id, key, wall=wall), verifier=verifier)
