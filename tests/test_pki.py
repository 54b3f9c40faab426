"""`edgesched dev-pki`: the files, their modes, names, SANs and chains, the ACL it generates
(and that the shipped template is the same rules), and refusing to overwrite."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgesched.errors import UsageError
from edgesched.pki import (
    EXAMPLE_NODES,
    DevPkiPlan,
    certificate_common_name,
    make_dev_pki,
    render_acl,
)
from tests.conftest import REPO

NODES = ("gw-1", "gw-2", "cloud-1")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgesched", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(c: x509.Certificate) -> str:
    return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    d = tmp_path_factory.mktemp("pki") / "dev"
    args = ["dev-pki", str(d)]
    for node in NODES:
        args += ["--node", node]
    args += ["--device", "cam-1", "--broker-host", "broker.lan", "--broker-host", "127.0.0.1",
             "--broker-host", "::1", "--days", "30"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return d, result


def test_files_and_modes(pki: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    d, result = pki
    expected = {"ca.pem", "ca.key", "broker.pem", "broker.key", "edgesched.acl",
                "devices/cam-1.pem", "devices/cam-1.key"}
    for node in NODES:
        expected |= {f"nodes/{node}.pem", f"nodes/{node}.key", f"keys/{node}.key",
                     f"keys/{node}.pem"}
    found = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
    assert found == expected
    for rel in expected:
        mode = stat.S_IMODE((d / rel).stat().st_mode)
        if rel.endswith(".key"):
            assert mode == 0o600, rel
            assert "PRIVATE KEY" in (d / rel).read_text()
        else:
            assert mode & 0o077 in (0o044, 0o000) and mode & 0o022 == 0, (rel, oct(mode))
        assert f"wrote {d / rel}" in result.stdout
    assert "Next steps" in result.stdout
    assert "PRIVATE KEY" not in result.stdout  # a key is never printed


def test_names_usages_and_chain(pki: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    d, _ = pki
    ca = cert(d / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    broker = cert(d / "broker.pem")
    assert cn(broker) == "broker.lan"
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert ExtendedKeyUsageOID.SERVER_AUTH in broker.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    for name, path in [*((n, d / "nodes" / f"{n}.pem") for n in NODES),
                       ("cam-1", d / "devices" / "cam-1.pem")]:
        leaf = cert(path)
        assert cn(leaf) == name == certificate_common_name(path)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in leaf.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        leaf.verify_directly_issued_by(ca)
        days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
        assert 29 <= days <= 30
    # The TLS stack accepts every pair: broker as a server, nodes and devices as clients.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "broker.pem", d / "broker.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(d / "ca.pem")
    client.load_cert_chain(d / "devices" / "cam-1.pem", d / "devices" / "cam-1.key")


def test_signing_keys_are_ed25519_pairs(
    pki: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    d, _ = pki
    for node in NODES:
        key = load_pem_private_key((d / "keys" / f"{node}.key").read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        pub = load_pem_public_key((d / "keys" / f"{node}.pem").read_bytes())
        assert pub == key.public_key()


def test_generated_acl_is_for_exactly_these_ids(
    pki: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    d, _ = pki
    text = (d / "edgesched.acl").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("user ")]
    assert users == list(NODES)
    assert "cam-1" not in text  # devices are covered by the patterns
    assert text == render_acl(NODES)
    assert "topic write edgesched/node/gw-1/state" in text
    assert "topic write edgesched/node/gw-1/state" not in text.split("user gw-2")[1]


def test_shipped_acl_template_comes_from_the_same_rules() -> None:
    shipped = (REPO / "packaging" / "mosquitto" / "edgesched.acl").read_text()
    assert shipped == render_acl(EXAMPLE_NODES, template=True), (
        "regenerate: python -c 'from edgesched.pki import *; print(render_acl(EXAMPLE_NODES, "
        "template=True), end=\"\")' > packaging/mosquitto/edgesched.acl")


def test_topic_prefix_in_the_acl(tmp_path: Path) -> None:
    make_dev_pki(DevPkiPlan(directory=tmp_path / "p", nodes=("n1",), prefix="site/a"))
    text = (tmp_path / "p" / "edgesched.acl").read_text()
    rules = [line for line in text.splitlines() if line and not line.startswith("#")
             and not line.startswith("user ")]
    assert rules and all(line.split()[2].startswith("site/a/") for line in rules)


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    d = tmp_path / "p"
    first = run_cli("dev-pki", str(d), "--node", "n1")
    assert first.returncode == 0, first.stderr
    before = (d / "ca.pem").read_bytes()
    again = run_cli("dev-pki", str(d), "--node", "n1")
    assert again.returncode == 2
    assert "exists" in again.stderr and "--force" in again.stderr
    assert (d / "ca.pem").read_bytes() == before
    forced = run_cli("dev-pki", str(d), "--node", "n1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (d / "ca.pem").read_bytes() != before
    assert stat.S_IMODE((d / "keys" / "n1.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(("nodes", "devices", "message"), [
    ((), (), "at least one --node"),
    (("bad id",), (), "must match"),
    (("n1",), ("cam/1",), "must match"),
    (("n1",), ("n1",), "given twice"),
])
def test_invalid_ids(tmp_path: Path, nodes: tuple[str, ...], devices: tuple[str, ...],
                     message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_dev_pki(DevPkiPlan(directory=tmp_path / "p", nodes=nodes, devices=devices))
    assert not (tmp_path / "p").exists()  # nothing written on a rejected plan


def test_cli_usage_error_exit_code(tmp_path: Path) -> None:
    result = run_cli("dev-pki", str(tmp_path / "p"), "--node", "x y")
    assert result.returncode == 2
    assert "must match" in result.stderr
