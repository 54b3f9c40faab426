"""`edgesched dev-pki`: a private CA, broker/node/device certificates, node signing keys and
the mosquitto ACL for exactly those identities, in one command (docs/security.md).

Everything is made with the `cryptography` package (no openssl subprocess). Private keys are
written with mode 0600 and never printed. The ACL rules live here, in `render_acl`, so the
shipped template `packaging/mosquitto/edgesched.acl` and a generated `DIR/edgesched.acl` come
from the same code (tests/test_pki.py checks the template is up to date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgesched.errors import UsageError

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # = config.NODE_ID_PATTERN
DEFAULT_BROKER_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_PREFIX = "edgesched"
EXAMPLE_NODES = ("gw-1", "gw-2", "cloud-1")

_KeyType = ec.EllipticCurvePrivateKey


# ---- the ACL ------------------------------------------------------------------------------
def node_acl_lines(node_id: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The `user NODE` block: what one node may publish and read (docs/security.md)."""
    p = prefix
    return [
        f"user {node_id}",
        # its own retained state (also its Last Will) and telemetry
        f"topic write {p}/node/{node_id}/state",
        f"topic write {p}/node/{node_id}/telemetry",
        # hand tasks to any neighbour, answer any neighbour's offload
        f"topic write {p}/node/+/offload",
        f"topic write {p}/node/+/offload-reply",
        f"topic write {p}/node/+/cancel",  # drop an attempt given up on (offload-protocol.md)
        # answer devices' submissions on their reply topics
        f"topic write {p}/device/+/reply/#",
        # the cluster view
        f"topic read {p}/node/+/state",
        f"topic read {p}/node/+/telemetry",
        f"topic read {p}/device/+/telemetry",
        # its own inboxes
        f"topic read {p}/node/{node_id}/submit",
        f"topic read {p}/node/{node_id}/offload",
        f"topic read {p}/node/{node_id}/offload-reply",
        f"topic read {p}/node/{node_id}/cancel",
    ]


def device_acl_lines(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The `pattern` lines: apply to every client, `%u` = its certificate CN."""
    p = prefix
    return [
        f"pattern write {p}/device/%u/telemetry",
        f"pattern write {p}/node/+/submit",
        f"pattern read {p}/device/%u/reply/#",
    ]


def render_acl(nodes: Sequence[str], prefix: str = DEFAULT_PREFIX, *,
               template: bool = False) -> str:
    """The mosquitto `acl_file` text for these node ids (devices need no entry of their own)."""
    head = [
        "# edgesched: mosquitto acl_file for packaging/mosquitto/edgesched.conf (docs/security.md)",
        "#",
        "# Clients are identified by their TLS certificate: `use_identity_as_username true`",
        "# makes the certificate's CN the username, so node ids and device ids are CNs.",
        "# mosquitto semantics: `pattern` lines apply to EVERY client (%u = its CN); lines under",
        "# `user NAME` apply to that client only; whatever no line allows is denied (a denied",
        "# publish is dropped silently, a denied subscription delivers nothing).",
        "#",
        f"# Topic prefix: {prefix} (mqtt.topic_prefix). To use another prefix, replace",
        f"# '{prefix}/' on every line below, or regenerate with",
        "# `edgesched dev-pki DIR --topic-prefix PREFIX ...`.",
    ]
    if template:
        head += [
            "#",
            "# TEMPLATE: the `user` blocks below are for the example node ids "
            + ", ".join(nodes) + ".",
            "# Write one block per node id of your cluster (or let `edgesched dev-pki` write",
            "# this file for your ids). A device needs no block: the patterns cover it.",
        ]
    head += [
        "# Nodes that map foreign topics (devices.mappings) need `topic read TOPIC` lines too.",
        "",
        "# -- every client (devices): its own telemetry, submissions to any node, its own",
        "#    reply topic P/device/<CN>/reply/# (what `edgesched submit` uses with a",
        "#    certificate). Nothing under P/node/ except submit. (mosquitto warns that the",
        "#    submit pattern has no %u: expected, it is meant for every client.)",
        *device_acl_lines(prefix),
    ]
    body: list[str] = []
    for node_id in nodes:
        body += ["", f"# -- node {node_id}", *node_acl_lines(node_id, prefix)]
    return "\n".join(head + body) + "\n"


# ---- certificates -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DevPkiPlan:
    directory: Path
    nodes: tuple[str, ...]
    devices: tuple[str, ...] = ()
    broker_hosts: tuple[str, ...] = DEFAULT_BROKER_HOSTS
    days: int = 365
    prefix: str = DEFAULT_PREFIX
    force: bool = False

    def files(self) -> list[Path]:
        d = self.directory
        out = [d / "ca.pem", d / "ca.key", d / "broker.pem", d / "broker.key"]
        for node in self.nodes:
            out += [d / "nodes" / f"{node}.pem", d / "nodes" / f"{node}.key",
                    d / "keys" / f"{node}.key", d / "keys" / f"{node}.pem"]
        for dev in self.devices:
            out += [d / "devices" / f"{dev}.pem", d / "devices" / f"{dev}.key"]
        out.append(d / "edgesched.acl")
        return out


def validate_plan(plan: DevPkiPlan) -> None:
    """Raise `UsageError` naming what to fix."""
    if not plan.nodes:
        raise UsageError("dev-pki needs at least one --node")
    for kind, ids in (("node", plan.nodes), ("device", plan.devices)):
        for ident in ids:
            if not ID_PATTERN.match(ident):
                raise UsageError(f"{kind} id {ident!r} must match [A-Za-z0-9_-]{{1,64}}")
    seen: set[str] = set()
    for ident in (*plan.nodes, *plan.devices):
        if ident in seen:
            raise UsageError(f"id {ident!r} is given twice: node and device ids are certificate "
                             "CNs and must all differ")
        seen.add(ident)
    if not plan.broker_hosts:
        raise UsageError("dev-pki needs at least one --broker-host")
    for host in plan.broker_hosts:
        if not host or any(ch.isspace() for ch in host):
            raise UsageError(f"--broker-host {host!r} is not a host name or address")
    if not 1 <= plan.days <= 36500:
        raise UsageError("--days must be between 1 and 36500")
    if (any(ch in plan.prefix for ch in "+#\x00 ") or not plan.prefix
            or plan.prefix.startswith("/") or plan.prefix.endswith("/")):
        raise UsageError("--topic-prefix must not be empty, contain '+', '#', spaces or NUL, "
                         "nor start or end with '/'")
    if not plan.force:
        existing = [str(p) for p in plan.files() if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]} exists ({len(existing)} of the files to write "
                             "exist): choose an empty directory or pass --force to replace them")


def _new_key() -> _KeyType:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, key: _KeyType) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgesched dev-pki"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _issue(*, subject: str, key: _KeyType, ca_key: _KeyType, ca_cert: x509.Certificate | None,
           days: int, usage: str, hosts: Sequence[str] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject if ca_cert is not None else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if ca_cert is None:  # the CA itself
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                        critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                        critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else \
            ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_signing_keypair(node_id: str, directory: Path, force: bool) -> tuple[Path, Path]:
    """The node's Ed25519 message-signing key pair, usable as `security.trust_dir`."""
    try:
        from edgesched.adapters.signing import write_node_keypair
    except ImportError:  # the signing module is optional for making a PKI
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        key_path, pub_path = directory / f"{node_id}.key", directory / f"{node_id}.pem"
        _write_private(key_path, key)  # type: ignore[arg-type]
        _write_public(pub_path, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return key_path, pub_path
    return write_node_keypair(node_id, directory, overwrite=force)


def make_dev_pki(plan: DevPkiPlan) -> list[Path]:
    """Write every file of the plan; returns them in the order written."""
    validate_plan(plan)
    d = plan.directory
    d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def cert_and_key(base: Path, cn: str, usage: str, hosts: Sequence[str] = ()) -> None:
        key = _new_key()
        cert = _issue(subject=cn, key=key, ca_key=ca_key, ca_cert=ca_cert, days=plan.days,
                      usage=usage, hosts=hosts)
        _write_private(base.with_suffix(".key"), key)
        _write_public(base.with_suffix(".pem"), _pem(cert))
        written.extend([base.with_suffix(".pem"), base.with_suffix(".key")])

    ca_key = _new_key()
    ca_cert = _issue(subject="edgesched dev CA", key=ca_key, ca_key=ca_key, ca_cert=None,
                     days=plan.days, usage="ca")
    _write_private(d / "ca.key", ca_key)
    _write_public(d / "ca.pem", _pem(ca_cert))
    written += [d / "ca.pem", d / "ca.key"]
    cert_and_key(d / "broker", plan.broker_hosts[0], "server", plan.broker_hosts)
    for node in plan.nodes:
        cert_and_key(d / "nodes" / node, node, "client")
    for dev in plan.devices:
        cert_and_key(d / "devices" / dev, dev, "client")
    for node in plan.nodes:
        written.extend(_write_signing_keypair(node, d / "keys", plan.force))
    _write_public(d / "edgesched.acl", render_acl(plan.nodes, plan.prefix).encode())
    written.append(d / "edgesched.acl")
    return written


def certificate_common_name(path: str | Path) -> str:
    """The CN of the first certificate in a PEM file (a device's id, for its reply topic)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read certificate {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM certificate: {exc}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise UsageError(f"certificate {path} has no CN")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


# ---- the command --------------------------------------------------------------------------
def next_steps(plan: DevPkiPlan) -> str:
    d = plan.directory.resolve()
    node = plan.nodes[0]
    host = plan.broker_hosts[0]
    dev = plan.devices[0] if plan.devices else None
    lines = [
        "",
        "Next steps (docs/security.md):",
        "  1. broker: install the mosquitto files (as root)",
        "       install -d -m 0750 -o root -g mosquitto /etc/mosquitto/certs",
        f"       install -m 0644 {d}/ca.pem {d}/broker.pem /etc/mosquitto/certs/",
        f"       install -m 0640 -g mosquitto {d}/broker.key /etc/mosquitto/certs/",
        f"       install -m 0644 {d}/edgesched.acl /etc/mosquitto/edgesched.acl",
        "       install -m 0644 packaging/mosquitto/edgesched.conf /etc/mosquitto/mosquitto.conf",
        "       systemctl restart mosquitto",
        f"  2. each node (here {node}): give it ca.pem, nodes/{node}.pem, nodes/{node}.key, its",
        f"     signing key keys/{node}.key and every public key keys/*.pem, and configure",
        f"       mqtt: {{host: {host}, port: 8883, tls: {{ca_file: {d}/ca.pem,",
        f"              cert_file: {d}/nodes/{node}.pem, key_file: {d}/nodes/{node}.key}}}}",
        f"       security: {{key_file: {d}/keys/{node}.key, trust_dir: {d}/keys}}",
        "     (with systemd, LoadCredential= the keys and give relative paths: they resolve in",
        "     $CREDENTIALS_DIRECTORY), then `edgesched check-config` and restart it.",
    ]
    if dev:
        lines += [
            f"  3. a device (here {dev}) submits with its certificate:",
            f"       edgesched submit --broker {host}:8883 --ca-file {d}/ca.pem "
            f"--cert-file {d}/devices/{dev}.pem --key-file {d}/devices/{dev}.key "
            f"--node {node} --type echo --input '1'",
        ]
    lines.append(f"The CA key {d}/ca.key signs new identities: keep it offline.")
    return "\n".join(lines)


def dev_pki_command(args: argparse.Namespace) -> int:
    plan = DevPkiPlan(
        directory=Path(args.directory), nodes=tuple(args.nodes or ()),
        devices=tuple(args.devices or ()),
        broker_hosts=tuple(args.broker_hosts or DEFAULT_BROKER_HOSTS), days=args.days,
        prefix=args.topic_prefix, force=args.force,
    )
    written = make_dev_pki(plan)
    for path in written:
        mode = path.stat().st_mode & 0o777
        print(f"wrote {path} ({mode:04o})")
    print(next_steps(plan))
    return 0
