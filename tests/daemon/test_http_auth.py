"""HTTP API authentication (#14): bearer tokens, TLS / client certificates, protected mode,
the cloud tier checking its edges' token, and secrets masked in output, status and logs.

Real HTTP everywhere: in-process aiohttp servers for the adapter, `edgesched` subprocesses for
the CLI and the cloud/edge end-to-end cases, a stdlib HTTP server as a misbehaving upstream.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from edgesched.adapters.cloud import CloudClient, _reply_document
from edgesched.adapters.http import HttpServer, server_ssl_context
from edgesched.adapters.metrics import Metrics
from edgesched.config import CloudSettings, load_settings, mask_url
from edgesched.errors import ConfigError, HttpError, UnauthorizedError
from tests.support.broker import Mosquitto, free_port
from tests.support.nodes import REPO, http_get, node_factory, wait_until

__all__ = ["node_factory"]

TOKEN = "tok-3b1f9d0c5e7a4f2b8c6d"
WRONG = "tok-00000000000000000000"


# ---- helpers ------------------------------------------------------------------------------


async def request(method: str, url: str, *, token: str | None = None,
                  ssl_context: ssl.SSLContext | bool = True,
                  body: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    connector = aiohttp.TCPConnector(ssl=ssl_context)
    async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, url, headers=headers, data=body) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def unauthorized(metrics: Metrics, path: str) -> float:
    value = metrics.registry.get_sample_value("edgesched_http_unauthorized_total",
                                              {"path": path})
    return value or 0.0


def server_with_routes(**kwargs: Any) -> tuple[HttpServer, Metrics]:
    metrics = Metrics(CollectorRegistry())

    async def tasks(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "got": len(await request.read())})

    server = HttpServer(host="127.0.0.1", port=0, metrics=metrics,
                        status=lambda: {"node_id": "n"},
                        routes=[web.post("/v1/tasks", tasks)], **kwargs)
    return server, metrics


def cli(*args: str, cwd: Path,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items()
            if not k.startswith("EDGESCHED_") and k != "CREDENTIALS_DIRECTORY"}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "edgesched", *args], cwd=cwd,
                          env=base | (env or {}), capture_output=True, text=True, timeout=60,
                          check=False)


class Pki:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(
                  digital_signature=True, key_cert_sign=True, crl_sign=True,
                  content_commitment=False, key_encipherment=False, data_encipherment=False,
                  key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        self.ca_file = self._write("ca.pem", ca)

        def leaf(name: str, usage: x509.ObjectIdentifier, san: bool) -> tuple[Path, Path]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder()
                       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                       .issuer_name(ca_name).public_key(key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(minutes=5))
                       .not_valid_after(now + dt.timedelta(days=1))
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
            if san:
                builder = builder.add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            key_path = self.dir / f"{name}.key"
            key_path.write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            return self._write(f"{name}.pem", cert), key_path

        self.server_cert, self.server_key = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH, True)
        self.client_cert, self.client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH,
                                                 False)

    def _write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.dir / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def client_context(self, *, with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


# ---- the adapter --------------------------------------------------------------------------


async def test_v1_needs_the_bearer_token_healthz_and_metrics_stay_open() -> None:
    server, _ = server_with_routes(token=TOKEN)
    async with server:
        base = server.base_url
        for method, path in (("GET", "/v1/status"), ("POST", "/v1/tasks")):
            for token in (None, WRONG, "", TOKEN[:-1]):
                status, text, headers = await request(method, base + path, token=token,
                                                      body=b"{}")
                assert status == 401, (method, path, token)
                assert headers.get("WWW-Authenticate") == "Bearer"
                doc = json.loads(text)
                assert doc["error"] == "unauthorized" and "bearer token" in doc["detail"]
                assert TOKEN not in text
            status, text, _ = await request(method, base + path, token=TOKEN, body=b"{}")
            assert status == 200, text
        # the scheme is case-insensitive, the token is not
        async with aiohttp.ClientSession() as session, session.get(
                base + "/v1/status", headers={"Authorization": f"bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        assert (await request("GET", base + "/v1/status", token=TOKEN.upper()))[0] == 401
        # unknown /v1 paths are refused before routing (no probing of what exists)
        assert (await request("GET", base + "/v1/nothing"))[0] == 401
        assert (await request("GET", base + "/v1/nothing", token=TOKEN))[0] == 404
        assert (await request("GET", base + "/healthz"))[0] == 200
        status, text, _ = await request("GET", base + "/metrics")
        assert status == 200
        assert 'edgesched_http_unauthorized_total{path="/v1/status"} 5.0' in text
        assert 'edgesched_http_unauthorized_total{path="/v1/tasks"} 4.0' in text
        assert 'edgesched_http_unauthorized_total{path="other"} 1.0' in text


async def test_metrics_auth_protects_metrics_but_not_healthz() -> None:
    server, metrics = server_with_routes(token=TOKEN, metrics_auth=True)
    async with server:
        base = server.base_url
        assert (await request("GET", base + "/metrics"))[0] == 401
        assert (await request("GET", base + "/metrics", token=WRONG))[0] == 401
        status, text, _ = await request("GET", base + "/metrics", token=TOKEN)
        assert status == 200 and "edgesched_build_info" in text
        assert (await request("GET", base + "/healthz"))[0] == 200
        assert unauthorized(metrics, "/metrics") == 2


async def test_without_a_token_nothing_is_refused() -> None:
    server, metrics = server_with_routes()
    async with server:
        assert (await request("GET", server.base_url + "/v1/status"))[0] == 200
        assert (await request("POST", server.base_url + "/v1/tasks", body=b"{}"))[0] == 200
    assert unauthorized(metrics, "/v1/status") == 0


async def test_https_with_a_token(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    server, _ = server_with_routes(
        token=TOKEN, ssl_context=server_ssl_context(pki.server_cert, pki.server_key))
    async with server:
        base = server.base_url
        assert base.startswith("https://127.0.0.1:")
        trusted = pki.client_context(with_cert=False)
        assert (await request("GET", base + "/v1/status", ssl_context=trusted))[0] == 401
        assert (await request("GET", base + "/v1/status", token=TOKEN,
                              ssl_context=trusted))[0] == 200
        # a client that does not trust the CA refuses the server
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await request("GET", base + "/healthz", ssl_context=ssl.create_default_context())
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port
            await request("GET", base.replace("https", "http") + "/healthz")


async def test_client_certificates_required_and_count_as_authenticated(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    context = server_ssl_context(pki.server_cert, pki.server_key, pki.ca_file)
    assert context.verify_mode is ssl.CERT_REQUIRED
    server, _ = server_with_routes(token=TOKEN, ssl_context=context)
    async with server:
        base = server.base_url
        with_cert = pki.client_context(with_cert=True)
        status, text, _ = await request("GET", base + "/v1/status", ssl_context=with_cert)
        assert status == 200 and json.loads(text) == {"node_id": "n"}
        assert (await request("POST", base + "/v1/tasks", ssl_context=with_cert,
                              body=b"{}"))[0] == 200
        without = pki.client_context(with_cert=False)
        with pytest.raises(aiohttp.ClientError):  # refused during the handshake
            await request("GET", base + "/v1/status", token=TOKEN, ssl_context=without)
        # a certificate from another CA is refused as well
        (tmp_path / "other").mkdir()
        other = Pki(tmp_path / "other")
        foreign = ssl.create_default_context(cafile=str(pki.ca_file))
        foreign.load_cert_chain(other.client_cert, other.client_key)
        with pytest.raises(aiohttp.ClientError):
            await request("GET", base + "/healthz", ssl_context=foreign)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    s = load_settings(None, http={"tls": {"cert_file": str(pki.server_cert),
                                          "key_file": str(pki.server_key),
                                          "client_ca_file": str(pki.ca_file)},
                                  "host": "0.0.0.0"})  # client certificates authenticate
    assert s.http.scheme == "https" and s.http.token is None
    for tls, wanted in (
        ({"cert_file": str(pki.server_cert)}, "set both or neither"),
        ({"client_ca_file": str(pki.ca_file)}, "needs cert_file and key_file"),
        ({"cert_file": str(pki.server_cert), "key_file": str(pki.client_key)},
         "cannot load the TLS certificate"),
        ({"cert_file": str(tmp_path / "missing.pem"), "key_file": str(pki.server_key)},
         "not a readable file"),
    ):
        with pytest.raises(ConfigError) as err:
            load_settings(None, http={"tls": tls})
        assert any(key.startswith("http.tls") and wanted in msg
                   for key, msg in err.value.problems), err.value.problems


# ---- protected mode and check-config ------------------------------------------------------


def test_protected_mode(tmp_path: Path) -> None:
    token = tmp_path / "http_token"
    token.write_text(TOKEN + "\n")
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost"):
        assert load_settings(None, http={"host": host}).http.host == host
    for host in ("0.0.0.0", "::", "192.168.1.10", "", "gw-1.example"):
        with pytest.raises(ConfigError) as err:
            load_settings(None, http={"host": host})
        (line,) = err.value.lines()
        assert "http.host" in line and "http.token_file" in line
        assert "allow_unauthenticated" in line and "client_ca_file" in line
    assert load_settings(None, http={"host": "0.0.0.0", "token_file": str(token)}).http.token
    assert load_settings(None, http={"host": "0.0.0.0", "allow_unauthenticated": True})
    with pytest.raises(ConfigError, match=r"metrics_auth needs http\.token_file"):
        load_settings(None, http={"metrics_auth": True})
    assert load_settings(None, http={"metrics_auth": True, "token_file": str(token)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_settings(None, http={"token_file": str(empty)})


def test_implicit_http_token_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "http_token").write_text(TOKEN + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings(None, http={"host": "0.0.0.0"})
    assert s.http.token is not None and s.http.token.get_secret_value() == TOKEN
    (tmp_path / "mine").write_text("tok-relative-0123456789\n")
    s = load_settings(None, http={"token_file": "mine"})
    assert s.http.token is not None
    assert s.http.token.get_secret_value() == "tok-relative-0123456789"


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_exits_78_naming_http_host(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"node_id: t1\nrole: cloud\nhttp: {{host: 0.0.0.0, port: {free_port()}}}\n")
    proc = cli(command, "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 78, proc.stderr
    assert "http.host" in proc.stderr and "http.token_file" in proc.stderr
    assert "allow_unauthenticated: true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_passes_with_a_token_or_the_explicit_opt_out(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(TOKEN)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http: {host: 0.0.0.0, token_file: tok}\n")
    proc = cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout
    assert yaml.safe_load(proc.stdout)["http"]["token"] == "********"
    cfg.write_text("http: {host: 0.0.0.0, allow_unauthenticated: true}\n")
    proc = cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["http"]["token"] is None


# ---- masking ------------------------------------------------------------------------------


def test_mask_url() -> None:
    assert mask_url("http://u:secret@127.0.0.1:1/v1") == "http://u:********@127.0.0.1:1/v1"
    assert mask_url("https://sometoken@cloud.example") == "https://********@cloud.example"
    assert mask_url("http://h:1/a@b") == "http://h:1/a@b"
    assert mask_url("http://h:1") == "http://h:1"


def test_check_config_masks_the_cloud_url_password(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cloud: {url: 'http://u:secret@127.0.0.1:1'}\n")
    proc = cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "secret" not in proc.stdout + proc.stderr
    assert yaml.safe_load(proc.stdout)["cloud"]["url"] == "http://u:********@127.0.0.1:1"


def test_cloud_url_password_and_token_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(TOKEN)
    with pytest.raises(ConfigError, match="use one of them") as err:
        load_settings(None, cloud={"url": "http://u:secret@h:1",
                                   "token_file": str(tmp_path / "tok")})
    assert "secret" not in str(err.value)


def test_upstream_error_bodies_are_never_echoed() -> None:
    with pytest.raises(HttpError) as err:
        _reply_document(500, b"<html>SECRETBODY Authorization: Bearer x</html>",
                        "http://u:********@h/v1/tasks", "text/html\r\nX-Evil: 1")
    text = str(err.value)
    assert "SECRETBODY" not in text and "Bearer" not in text and "\n" not in text
    assert "HTTP 500" in text and "47 bytes" in text and err.value.reason == "http_status"
    with pytest.raises(HttpError, match="not a task reply"):
        _reply_document(200, b"SECRETBODY", "u", "")


class _Upstream:
    """A stdlib HTTP server answering every POST with `status` and a body naming a secret."""

    def __init__(self, status: int, body: bytes) -> None:
        outer = self
        self.requests: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the stdlib's name
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                outer.requests.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Upstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def failing_upstream() -> Iterator[_Upstream]:
    with _Upstream(500, b"upstream broke: SECRETBODY") as upstream:
        yield upstream


async def test_cloud_client_masks_url_and_body(failing_upstream: _Upstream,
                                               caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://u:secret@127.0.0.1:{failing_upstream.port}"
    client = CloudClient(CloudSettings(url=url))
    async with client:
        with pytest.raises(HttpError) as err:
            await client.submit(b"{}")
    text = str(err.value)
    assert "secret" not in text and "SECRETBODY" not in text
    assert "u:********@127.0.0.1" in text and "HTTP 500" in text
    assert failing_upstream.requests[0]["Authorization"].startswith("Basic ")
    # unreachable: the aiohttp error text is scrubbed too
    dead = CloudClient(CloudSettings(url=f"http://u:secret@127.0.0.1:{free_port()}"))
    async with dead:
        with pytest.raises(HttpError) as err:
            await dead.submit(b"{}", timeout_s=2)
    assert "secret" not in str(err.value) and err.value.reason == "unreachable"
    assert "secret" not in caplog.text


async def test_cloud_client_refused_token(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    server, metrics = server_with_routes(token=TOKEN)
    (tmp_path / "wrong").write_text(WRONG)
    async with server:
        settings = CloudSettings(url=server.base_url, token_file=tmp_path / "wrong")
        async with CloudClient(settings) as client:
            for _ in range(3):
                with pytest.raises(UnauthorizedError) as err:
                    await client.submit(b"{}")
                assert err.value.reason == "unauthorized"
                assert "cloud.token_file" in str(err.value) and WRONG not in str(err.value)
    refused = [r for r in caplog.records if "refused our token" in r.getMessage()]
    assert len(refused) == 1, "logged once, not per attempt"
    assert WRONG not in caplog.text and TOKEN not in caplog.text
    assert unauthorized(metrics, "/v1/tasks") == 3


# ---- real nodes ---------------------------------------------------------------------------


def post_task(node: Any, doc: dict[str, Any], token: str | None = None,
              timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(node.base_url + "/v1/tasks", data=json.dumps(doc).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


@pytest.mark.e2e
def test_status_masks_cloud_url_and_upstream_body(
    mosquitto: Mosquitto, node_factory: Any, failing_upstream: _Upstream
) -> None:
    edge = node_factory("edge-m", broker=mosquitto, overrides={
        "cloud": {"url": f"http://u:secret@127.0.0.1:{failing_upstream.port}"},
        "policy": {"name": "cloud"}})
    status, reply = post_task(edge, {"type": "echo", "input": "hi"})
    assert status == 200 and reply["status"] == "ok", reply
    assert reply["placement"] == "local", "the failed cloud attempt fell back"
    assert failing_upstream.requests, "the cloud was tried"
    doc = edge.get_json("/v1/status")
    text = json.dumps(doc)
    assert "secret" not in text and "SECRETBODY" not in text
    attempts = doc["scheduler"]["decisions"][-1]["attempts"]
    assert "u:********@127.0.0.1" in attempts[0]["error"], attempts
    assert edge.metric("edgesched_cloud_requests_failed_total", reason="http_status") == 1
    edge.terminate()
    log = edge.log_text()
    assert "secret" not in log and "SECRETBODY" not in log


@pytest.mark.e2e
def test_cloud_checks_the_edges_token(mosquitto: Mosquitto, node_factory: Any,
                                      tmp_path: Path) -> None:
    (tmp_path / "cloud.token").write_text(TOKEN + "\n")
    (tmp_path / "wrong.token").write_text(WRONG + "\n")
    cloud = node_factory("cloud-1", broker=mosquitto, overrides={
        "role": "cloud", "http": {"token_file": "cloud.token"}, "executor": {"slots": 4}})
    right = node_factory("edge-r", broker=mosquitto, overrides={
        "cloud": {"url": cloud.base_url, "token_file": "cloud.token"},
        "policy": {"name": "cloud"}})
    wrong = node_factory("edge-w", broker=mosquitto, overrides={
        "cloud": {"url": cloud.base_url, "token_file": "wrong.token"},
        "policy": {"name": "cloud"}})

    # the cloud's own API needs the token too (the helper sends it from its token_file)
    assert http_get(cloud.base_url + "/v1/status")[0] == 401
    assert cloud.status()["role"] == "cloud"

    for i in range(3):
        status, reply = post_task(right, {"type": "echo", "input": i})
        assert status == 200 and reply["status"] == "ok", reply
        assert (reply["placement"], reply["executed_by"]) == ("cloud", "cloud-1"), reply
    for i in range(3):
        status, reply = post_task(wrong, {"type": "echo", "input": i})
        assert status == 200 and reply["status"] == "ok", reply
        assert (reply["placement"], reply["executed_by"]) == ("local", "edge-w"), reply
    assert wrong.metric("edgesched_cloud_requests_failed_total", reason="unauthorized") == 3
    assert right.metric("edgesched_cloud_requests_failed_total", reason="unauthorized") == 0
    assert cloud.metric("edgesched_http_unauthorized_total", path="/v1/tasks") == 3
    attempts = wrong.status()["scheduler"]["decisions"][-1]["attempts"]
    assert attempts[0]["node_id"] == "cloud" and "refused our token" in attempts[0]["error"]

    log = wait_until(lambda: wrong.log_text() if "refused our token" in wrong.log_text()
                     else None, 5, what="the wrong-token warning")
    assert log.count("refused our token (HTTP 401)") == 1, "rate-limited to one line"
    for node in (cloud, right, wrong):
        assert TOKEN not in node.log_text() and WRONG not in node.log_text()


@pytest.mark.e2e
def test_status_command_sends_the_token(mosquitto: Mosquitto, node_factory: Any,
                                        tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    node = node_factory("cloud-s", broker=mosquitto, overrides={
        "role": "cloud", "http": {"token_file": "api.token"}})
    refused = cli("status", "--url", node.base_url, cwd=tmp_path)
    assert refused.returncode == 1 and "--token-file" in refused.stderr, refused.stderr
    ok = cli("status", "--url", node.base_url, "--token-file", str(tmp_path / "api.token"),
             cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["node_id"] == "cloud-s"
    # from the node's own config: its address and its token
    ok = cli("status", "--config", str(node.config_path), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    health = cli("healthcheck", "--config", str(node.config_path), cwd=tmp_path)
    assert health.returncode == 0, health.stderr


async def test_cloud_client_verifies_an_https_cloud_with_ca_file(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    server, _ = server_with_routes(
        token=TOKEN, ssl_context=server_ssl_context(pki.server_cert, pki.server_key))
    (tmp_path / "tok").write_text(TOKEN)
    async with server:
        trusting = CloudSettings(url=server.base_url, token_file=tmp_path / "tok",
                                 ca_file=pki.ca_file)
        async with CloudClient(trusting) as client:
            assert await client.submit(b"{}") == {"status": "ok", "got": 2}
        # without the private CA the certificate is not trusted: no request goes out
        async with CloudClient(CloudSettings(url=server.base_url,
                                             token_file=tmp_path / "tok")) as client:
            with pytest.raises(HttpError) as err:
                await client.submit(b"{}")
            assert err.value.reason == "unreachable" and "Certificate" in str(err.value)


@pytest.mark.e2e
def test_https_node_with_the_status_and_healthcheck_commands(
    mosquitto: Mosquitto, node_factory: Any, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    node = node_factory("cloud-t", broker=mosquitto, start=False, overrides={
        "role": "cloud", "http": {"token_file": "api.token", "tls": {
            "cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}}})
    node.start(wait=False)
    https = f"https://127.0.0.1:{node.http_port}"
    context = pki.client_context(with_cert=False)

    def healthy() -> bool:
        assert node.running, node.log_text()
        try:
            with urllib.request.urlopen(https + "/healthz", timeout=1, context=context) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(healthy, 20, what="https /healthz")
    assert f"HTTP API listening on {https} (authentication: bearer token)" in node.log_text()
    assert http_get(node.base_url + "/healthz")[0] == 0, "no plain HTTP on the TLS port"
    ca = ("--ca-file", str(pki.ca_file))
    health = cli("healthcheck", "--config", str(node.config_path), *ca, cwd=tmp_path)
    assert health.returncode == 0, health.stderr
    status = cli("status", "--config", str(node.config_path), *ca, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["node_id"] == "cloud-t"
    untrusted = cli("status", "--config", str(node.config_path), cwd=tmp_path)
    assert untrusted.returncode == 1 and "certificate" in untrusted.stderr.lower()
