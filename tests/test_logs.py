"""Logs (issue #18 part 5): JSON lines carry node_id and task_id; text lines carry an ISO 8601
timestamp with its zone, or under journald `<N>` priorities and no timestamp; paho's socket
errors are not ERRORs of a bare `mqtt` logger; a normal (re)start warns about nothing."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from edgesched import logs
from tests.support.broker import Mosquitto
from tests.support.nodes import node_factory, wait_until

__all__ = ["node_factory"]  # the fixture

ISO_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.set_node_id(None)


def test_json_lines_carry_node_and_task_ids(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("INFO", "json", node_id="gw-7", stream=out)
    log = logging.getLogger("edgesched.test")
    log.info("outside a task")
    with logs.task_context("t-1"):
        log.warning("inside %s", "t-1")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["node_id"] == "gw-7" and "task_id" not in first
    assert (second["task_id"], second["level"], second["msg"]) == ("t-1", "warning", "inside t-1")
    assert re.fullmatch(ISO_Z, second["time"])


def test_text_lines_have_a_zoned_timestamp_or_journal_priorities(
        restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    logs.setup_logging("DEBUG", "text", stream=out)
    logging.getLogger("edgesched.test").info("hello")
    assert re.fullmatch(ISO_Z + r" INFO    edgesched\.test: hello\n", out.getvalue())

    with tempfile.TemporaryFile("w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.setup_logging("DEBUG", "text", stream=journal)
        log = logging.getLogger("edgesched.test")
        log.error("broken")
        log.warning("odd")
        log.info("fine")
        log.debug("detail")
        with logs.task_context("t-9"):
            log.info("two\nlines")
        journal.seek(0)
        assert journal.read().splitlines() == [
            "<3>edgesched.test: broken", "<4>edgesched.test: odd", "<6>edgesched.test: fine",
            "<7>edgesched.test: detail", "<6>edgesched.test: two", "<6>lines [task t-9]"]
        # JSON under journald: the priority prefix too (the journal strips it)
        journal.seek(0)
        journal.truncate()
        logs.setup_logging("INFO", "json", stream=journal)
        logging.getLogger("edgesched.test").warning("careful")
        journal.seek(0)
        line = journal.read()
        assert line.startswith("<4>{") and json.loads(line[3:])["msg"] == "careful"
    # JOURNAL_STREAM naming another file (inherited, stderr redirected): not the journal
    assert not logs.journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_paho_socket_errors_are_debug_under_edgesched(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("INFO", "text", stream=out)
    paho = logging.getLogger(logs.PAHO_LOGGER)
    paho.error("failed to receive on socket: [Errno 104] Connection reset by peer")
    paho.warning("something else")
    assert out.getvalue().count("\n") == 1 and "something else" in out.getvalue()
    logs.set_level("DEBUG")
    paho.error("failed to receive on socket: [Errno 104] Connection reset by peer")
    assert "DEBUG   edgesched.mqtt.paho: failed to receive on socket" in out.getvalue()


async def test_a_connection_reset_is_a_warning_of_ours_not_an_error_of_paho(
        restore_logging: None) -> None:
    """A peer that resets the connection (a broker killed mid-session, a TLS alert): paho
    logs "failed to receive on socket" at ERROR; here it is DEBUG under edgesched.mqtt.paho,
    and the adapter's own warning says what happened."""
    import asyncio
    import socket
    import struct
    import threading

    from edgesched.adapters.metrics import Metrics
    from edgesched.adapters.mqtt import MqttClient, MqttOptions

    def resetting_broker(sock: socket.socket) -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(4096)  # CONNECT
            conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK (v5, success)
            time.sleep(0.3)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with linger 0: a TCP RST

    for level in ("INFO", "DEBUG"):
        out = io.StringIO()
        logs.setup_logging(level, "text", stream=out)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(4)
            threading.Thread(target=resetting_broker, args=(sock,), daemon=True).start()
            client = MqttClient(MqttOptions(port=sock.getsockname()[1],
                                            reconnect_initial_s=5, reconnect_max_s=5), Metrics())
            async with client:
                for _ in range(100):  # bounded: 5 s
                    if "lost connection" in out.getvalue():
                        break
                    await asyncio.sleep(0.05)
        text = out.getvalue()
        assert "WARNING edgesched.mqtt: lost connection to MQTT broker" in text, text
        assert "ERROR" not in text and " mqtt:" not in text, text
        if level == "DEBUG":  # still there for whoever asks for it
            assert "DEBUG   edgesched.mqtt.paho: failed to receive on socket" in text, text
        else:
            assert "failed to receive" not in text


# -- a real node -------------------------------------------------------------------------------

def post(url: str, doc: dict[str, Any]) -> int:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.e2e
def test_a_node_logs_json_then_journal_text_and_restarts_quietly(mosquitto: Mosquitto,
                                                                 node_factory: Any) -> None:
    node = node_factory("gw-1", broker=mosquitto, overrides={"log": {"format": "json"}})
    assert post(node.base_url + "/v1/tasks", {"id": "t-42", "type": "warp"}) == 400
    wait_until(lambda: "t-42" in node.log_text(), 10, what="the rejection logged")
    lines = [json.loads(line) for line in node.log_text().splitlines()]
    assert all(line["node_id"] == "gw-1" for line in lines)
    rejected = [line for line in lines if line.get("task_id") == "t-42"]
    assert rejected and rejected[0]["level"] == "warning", lines[-3:]

    # The broker goes away under the node: paho's socket error is no ERROR line.
    mosquitto.stop()
    wait_until(lambda: "lost connection to MQTT broker" in node.log_text(), 10,
               what="the loss logged")
    mosquitto.start()
    wait_until(lambda: node.status()["mqtt"]["connected"], 15, what="reconnected")
    assert node.terminate() == 0

    # Restarted under journald (its stderr is the journal's stream), the node's retained
    # offline state of the last run is on the broker: no warning about it, no timestamps.
    text_start = len(node.log_path.read_bytes())
    st = os.stat(node.log_path)
    node.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    node.config["log"] = {"level": "INFO", "format": "text"}
    node.config_path.write_text(json.dumps(node.config))
    node.start()
    time.sleep(1.0)  # telemetry intervals (0.3 s) pass: a late warning would be logged by now
    retained = subprocess.run(["mosquitto_sub", "-p", str(mosquitto.port), "-t",
                               "edgesched/node/gw-1/state", "-C", "1", "-W", "5"],
                              capture_output=True, check=True, timeout=10)
    assert json.loads(retained.stdout)["status"] == "online"  # announced, just not warned
    assert node.terminate() == 0
    text = node.log_path.read_bytes()[text_start:].decode()
    lines = text.splitlines()
    assert lines and all(re.match(r"<[0-7]>edgesched\.", line) for line in lines), lines[:5]
    assert not [line for line in lines if line[:3] in ("<0>", "<1>", "<2>", "<3>", "<4>")], (
        "a normal start and stop warns about nothing")
    assert "ready" in text
    everything = node.log_text()
    assert not re.search(r"WARNING .*state not re-published|\"warning\".*state not re-published",
                         everything)
    assert "failed to receive on socket" not in everything  # DEBUG only (level INFO here)
    assert not re.search(r"ERROR +mqtt:", everything)
