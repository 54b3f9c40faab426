"""The MQTT adapter over TLS to a real mosquitto TLS listener, with `edgesched dev-pki` files:
server verified with the CA only; a wrong CA or a certificate for another host is refused with
a clear reason logged, and retried; a client certificate where the listener requires one."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions
from edgesched.pki import DevPkiPlan, make_dev_pki
from tests.support.broker import Mosquitto, broker_workdir, install_broker_files


def tls_broker_conf(port: int, certs: Path, workdir: Path, *, require_certificate: bool) -> str:
    return (
        f"listener {port} 127.0.0.1\n"
        f"cafile {certs}/ca.pem\ncertfile {certs}/broker.pem\nkeyfile {certs}/broker.key\n"
        f"require_certificate {'true' if require_certificate else 'false'}\n"
        "allow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        f"log_dest file {workdir}/mosquitto-{port}.log\n"
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    make_dev_pki(DevPkiPlan(directory=d, nodes=("gw-1",), devices=("cam-1",),
                            broker_hosts=("localhost", "127.0.0.1")))
    return d


def start_tls_broker(pki_dir: Path, *, require_certificate: bool = False) -> Mosquitto:
    workdir = broker_workdir()
    certs, _ = install_broker_files(pki_dir, workdir)
    broker = Mosquitto(workdir=workdir)
    broker.conf_text = tls_broker_conf(broker.port, certs, workdir,
                                       require_certificate=require_certificate)
    broker.start()
    return broker


@pytest.fixture
def tls_broker(pki: Path) -> Iterator[Mosquitto]:
    broker = start_tls_broker(pki)
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)


def client(broker: Mosquitto, name: str, host: str = "127.0.0.1", **tls: object) -> MqttClient:
    opts = MqttOptions(host=host, port=broker.port, client_id=name, keepalive_s=2,
                       reconnect_initial_s=0.05, reconnect_max_s=0.3, **tls)  # type: ignore[arg-type]
    return MqttClient(opts, Metrics(CollectorRegistry()))


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, within_s: float) -> str:
    async with asyncio.timeout(within_s):
        while True:
            for record in caplog.records:
                if text in record.getMessage():
                    return record.getMessage()
            await asyncio.sleep(0.05)


async def test_tls_with_the_ca_only_roundtrip(tls_broker: Mosquitto, pki: Path) -> None:
    a = client(tls_broker, "a", tls_ca_file=str(pki / "ca.pem"))
    b = client(tls_broker, "b", host="localhost", tls_ca_file=str(pki / "ca.pem"))
    got: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def on_msg(msg: InboundMessage) -> None:
        await got.put(msg)

    await b.subscribe("t/#", on_msg, qos=1)
    async with a, b:
        await asyncio.wait_for(a.wait_connected(), 10)
        await asyncio.wait_for(b.wait_connected(), 10)
        await a.publish("t/1", b"over tls", qos=1)
        msg = await asyncio.wait_for(got.get(), 5)
    assert (msg.topic, msg.payload) == ("t/1", b"over tls")


@pytest.mark.slow  # ~5 s: the refused client waits out its connect timeout
async def test_plain_tcp_client_gets_nothing_from_a_tls_listener(
    tls_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    plain = client(tls_broker, "plain")
    async with plain:
        await wait_for_log(caplog, "cannot connect to MQTT broker", 15)
        assert not plain.connected


async def test_wrong_ca_is_refused_logged_and_retried(
    tls_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other"
    make_dev_pki(DevPkiPlan(directory=other, nodes=("x",)))
    caplog.set_level(logging.DEBUG, logger="edgesched.mqtt")
    c = client(tls_broker, "wrong-ca", tls_ca_file=str(other / "ca.pem"))
    async with c:
        line = await wait_for_log(caplog, "certificate verify failed", 10)
        assert "not signed by mqtt.tls.ca_file" in line
        # it keeps retrying like any connect failure, and never connects
        await wait_for_log(caplog, "reconnecting to", 5)
        await asyncio.sleep(0.5)
        assert not c.connected


async def test_hostname_mismatch_is_named_and_can_be_turned_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "elsewhere"
    make_dev_pki(DevPkiPlan(directory=d, nodes=("x",), broker_hosts=("broker.example",)))
    broker = start_tls_broker(d)
    try:
        strict = client(broker, "strict", tls_ca_file=str(d / "ca.pem"))
        async with strict:
            line = await wait_for_log(caplog, "mismatch", 10)
            assert "does not name the host" in line and "check_hostname" in line
            assert not strict.connected
        lax = client(broker, "lax", tls_ca_file=str(d / "ca.pem"), tls_check_hostname=False)
        async with lax:
            await asyncio.wait_for(lax.wait_connected(), 10)
        assert any("check_hostname is off" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)


@pytest.mark.slow  # ~5 s: the refused client waits out its connect timeout
async def test_listener_requiring_a_client_certificate(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = start_tls_broker(pki, require_certificate=True)
    try:
        without = client(broker, "no-cert", tls_ca_file=str(pki / "ca.pem"))
        async with without:
            line = await wait_for_log(caplog, "cannot connect to MQTT broker", 10)
            assert "client certificate" in line, line
            assert not without.connected
        with_cert = client(broker, "cam-1", tls_ca_file=str(pki / "ca.pem"),
                           tls_cert_file=str(pki / "devices" / "cam-1.pem"),
                           tls_key_file=str(pki / "devices" / "cam-1.key"))
        async with with_cert:
            await asyncio.wait_for(with_cert.wait_connected(), 10)
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)


def test_submit_tls_flags_and_reply_topic(pki: Path, tmp_path: Path) -> None:
    import argparse

    from edgesched.errors import UsageError
    from edgesched.node.submit import reply_topic_for, tls_options

    def ns(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"ca_file": None, "cert_file": None, "key_file": None,
                                     "no_check_hostname": False, **kw})

    assert tls_options(ns()) == {}
    ca, cert, key = (str(pki / "ca.pem"), str(pki / "devices" / "cam-1.pem"),
                     str(pki / "devices" / "cam-1.key"))
    assert tls_options(ns(ca_file=ca, cert_file=cert, key_file=key)) == {
        "tls_ca_file": ca, "tls_cert_file": cert, "tls_key_file": key,
        "tls_check_hostname": True}
    with pytest.raises(UsageError, match="go together"):
        tls_options(ns(ca_file=ca, cert_file=cert))
    with pytest.raises(UsageError, match="needs --ca-file"):
        tls_options(ns(cert_file=cert, key_file=key))
    with pytest.raises(UsageError, match="--ca-file: cannot read"):
        tls_options(ns(ca_file=str(tmp_path / "missing.pem")))
    assert reply_topic_for("edgesched", "t0k", None) == "edgesched/client/t0k/reply"
    assert reply_topic_for("edgesched", "t0k", cert) == "edgesched/device/cam-1/reply/t0k"
    with pytest.raises(UsageError, match="not a PEM certificate"):
        reply_topic_for("edgesched", "t0k", key)
