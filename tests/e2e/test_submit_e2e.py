"""One real edge node: a hash task through mosquitto_rr, POST /v1/tasks and `edgesched submit`;
repeated ids; malformed submissions rejected with reasons beside concurrent valid work."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.client import TaskClient, expected_digest, expected_trace
from tests.support.broker import Mosquitto
from tests.support.nodes import REPO, wait_until

pytestmark = pytest.mark.e2e

HASH_INPUT = {"data": "edge", "rounds": 1234}


def post(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


@pytest.fixture
def node(mosquitto: Mosquitto, node_factory: Any) -> Any:
    return node_factory("gw-1", broker=mosquitto, overrides={
        "executor": {"slots": 2, "max_input_bytes": 4096},
        "http": {"max_body_bytes": 16384},
    })


def test_hash_three_ways(mosquitto: Mosquitto, node: Any) -> None:
    digest = expected_digest(**HASH_INPUT)
    submit = json.dumps({"v": 1, "type": "hash", "input": HASH_INPUT})
    rr = subprocess.run(
        ["mosquitto_rr", "-p", str(mosquitto.port), "-t", "edgesched/node/gw-1/submit",
         "-e", "rr/reply", "-q", "1", "-W", "15", "-m", submit],
        capture_output=True, timeout=30, check=True)
    reply = json.loads(rr.stdout)
    assert (reply["status"], reply["result"]) == ("ok", {"digest": digest})
    assert (reply["placement"], reply["executed_by"], reply["attempts"]) == ("local", "gw-1", 1)
    assert set(reply) == {"v", "id", "status", "result", "placement", "executed_by",
                          "latency_s", "attempts"}

    status, reply = post(node.base_url + "/v1/tasks", submit.encode())
    assert (status, reply["status"], reply["result"]) == (200, "ok", {"digest": digest})

    cli = subprocess.run(
        [sys.executable, "-m", "edgesched", "submit", "--node", "gw-1", "--type", "hash",
         "--input", json.dumps(HASH_INPUT), "--broker", mosquitto.address, "--timeout", "20"],
        capture_output=True, timeout=40, cwd=REPO)
    assert cli.returncode == 0, cli.stderr.decode()
    assert json.loads(cli.stdout)["result"] == {"digest": digest}

    bad = subprocess.run(
        [sys.executable, "-m", "edgesched", "submit", "--node", "gw-1", "--type", "nope",
         "--broker", mosquitto.address, "--timeout", "20"],
        capture_output=True, timeout=40, cwd=REPO)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["status"] == "rejected"


def test_http_rejections(node: Any) -> None:
    url = node.base_url + "/v1/tasks"
    cases = [
        (b"{nope", 400, "not valid UTF-8 JSON"),
        (b'{"type": "warp"}', 400, "unknown task type 'warp'"),
        (b'{"type": "hash", "input": {"data": 1, "rounds": 1}}', 400, "data must be a string"),
        (json.dumps({"type": "echo", "input": "x" * 5000}).encode(), 413, "limit is 4096"),
        (json.dumps({"type": "echo", "input": "x" * 20000}).encode(), 413, "larger than"),
    ]
    for body, code, fragment in cases:
        status, reply = post(url, body)
        assert (status, reply["status"]) == (code, "rejected"), reply
        assert fragment in reply["error"]
    assert node.metric("edgesched_tasks_rejected_total", reason="unknown_type") == 1


async def test_duplicate_ids_and_malformed_beside_valid_work(node: Any,
                                                             mosquitto: Mosquitto) -> None:
    async with TaskClient(mosquitto) as client:
        sleep_doc = {"v": 1, "id": "dup-1", "type": "sleep", "input": {"seconds": 0.5}}
        first = await client.submit("gw-1", sleep_doc)
        await resend(client, "gw-1", sleep_doc, first)  # same route, in flight: attaches
        other = await client.submit("gw-1", sleep_doc, v5=False)  # another route: its own run
        valid = [await client.submit("gw-1", {"type": "matmul", "input": {"n": 40, "seed": i}},
                                     v5=i % 2 == 0) for i in range(20)]
        bad = {
            await client.submit("gw-1", b"\xff not json"): "not valid UTF-8 JSON",
            await client.submit("gw-1", {"type": "teleport"}): "unknown task type",
            await client.submit("gw-1", {"type": "hash", "input": {"data": "x",
                                                                    "rounds": "9"}}):
                "rounds must be an integer",
            await client.submit("gw-1", {"type": "sleep", "input": {"seconds": True}}):
                "seconds must be a number",
            await client.submit("gw-1", {"type": "echo", "input": "y" * 8000}): "limit is 4096",
            await client.submit("gw-1", {"type": "echo", "priority": "high"}): "priority",
        }
        replies = await client.wait_all([first, other, *valid, *bad], within_s=30)
        assert replies[first]["status"] == "ok"
        assert replies[other]["status"] == "ok" and replies[other] != replies[first]
        await asyncio.to_thread(wait_until, lambda: len(client.replies[first]) == 2, 10)
        await resend(client, "gw-1", sleep_doc, first)  # finished: the same outcome again
        await asyncio.to_thread(wait_until, lambda: len(client.replies[first]) == 3, 10)
        assert client.replies[first] == [replies[first]] * 3
        for i, key in enumerate(valid):
            assert replies[key]["status"] == "ok"
            assert replies[key]["result"]["trace"] == pytest.approx(expected_trace(40, i))
        for key, fragment in bad.items():
            assert replies[key]["status"] == "rejected"
            assert fragment in replies[key]["error"], replies[key]
    assert all(len(v) == 1 for k, v in client.replies.items() if k != first)
    assert node.metric("edgesched_tasks_completed_total", placement="local",
                       status="ok") == 22  # 20 matmul + the sleep once per reply route


async def resend(client: TaskClient, node: str, doc: dict[str, Any], key: str) -> None:
    """Publish `doc` again on the reply route of the earlier submission `key` (a redelivery:
    repeated ids are recognised per reply topic + correlation, docs/tasks.md)."""
    await client._client.publish(
        f"{client.prefix}/node/{node}/submit", json.dumps(doc).encode(), qos=1,
        response_topic=f"{client.prefix}/client/{client.token}/{key}",
        correlation_data=key.encode())


async def test_sigterm_lets_in_flight_tasks_finish(node: Any, mosquitto: Mosquitto) -> None:
    async with TaskClient(mosquitto) as client:
        key = await client.submit("gw-1", {"type": "sleep", "input": {"seconds": 2}})
        await asyncio.to_thread(wait_until, lambda: node.status()["tasks"]["running"] == 1, 10)
        code = await asyncio.to_thread(node.terminate, 15)
        reply = (await client.wait_all([key], within_s=5))[key]
    assert code == 0
    assert (reply["status"], reply["result"]) == ("ok", {"slept": 2.0})


async def test_reply_survives_a_broker_restart(node: Any, mosquitto: Mosquitto) -> None:
    async with TaskClient(mosquitto) as client:
        key = await client.submit("gw-1", {"type": "sleep", "input": {"seconds": 4}})
        await asyncio.to_thread(wait_until, lambda: node.status()["tasks"]["running"] == 1, 10)
        mosquitto.stop()
        await asyncio.sleep(0.5)
        mosquitto.start()
        reply = (await client.wait_all([key], within_s=20))[key]
    assert (reply["status"], reply["result"]) == ("ok", {"slept": 4.0})
    assert len(client.replies[key]) == 1


# -- `edgesched submit` as an operator meets it (issue #18) -----------------------------------

def run_submit(*argv: str, env: dict[str, str] | None = None,
               timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """`edgesched submit ARGV...` in a clean environment (no EDGESCHED_* of the test run);
    returns the finished process and how long it took."""
    import os
    import time

    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGESCHED_")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgesched", "submit", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**base, **(env or {})})
    return proc, time.monotonic() - started


def test_an_unreachable_broker_is_named_and_fails_fast() -> None:
    """Reproduces the issue: a wrong broker was retried for 120 s and the node was blamed."""
    import socket

    from tests.support.broker import free_port

    port = free_port()  # nothing listens there: refused
    proc, took = run_submit("--node", "gw-1", "--type", "echo", "--broker", f"127.0.0.1:{port}")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"cannot connect to the MQTT broker 127.0.0.1:{port}" in last, proc.stderr
    assert "gw-1" not in last  # the node is not blamed
    assert took < 10, f"took {took:.1f}s (the contract: within 10 s)"

    # A listener that is no MQTT broker (accepts, never answers a CONNECT): named too.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        proc, took = run_submit("--node", "gw-1", "--type", "echo",
                                "--broker", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert f"cannot connect to the MQTT broker 127.0.0.1:{port}" in proc.stderr
    assert took < 10, f"took {took:.1f}s (the contract: within 10 s)"


def test_config_env_unknown_node_bad_input_and_http(mosquitto: Mosquitto, node: Any,
                                                    tmp_path: Any) -> None:
    # The broker from a config file (no --broker), its port overridden from the environment
    # like for every other command: the file names a wrong port, the env the right one.
    cfg = tmp_path / "client.yaml"
    cfg.write_text(f"node_id: gw-1\nmqtt: {{host: 127.0.0.1, port: 1}}\n"
                   f"http: {{port: {node.http_port}}}\n")
    env = {"EDGESCHED_MQTT__PORT": str(mosquitto.port)}
    proc, _ = run_submit("--config", str(cfg), "--type", "echo", "--input", '{"a": 1}',
                         "--timeout", "20", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"a": 1}
    proc, _ = run_submit("--type", "echo", "--input", "[2]", "--timeout", "20",
                         env={**env, "EDGESCHED_CONFIG": str(cfg)})
    assert proc.returncode == 0, proc.stderr
    # without the env override the file's broker is used, and named
    proc, _ = run_submit("--config", str(cfg), "--type", "echo", "--connect-timeout", "1")
    assert proc.returncode == 1 and "MQTT broker 127.0.0.1:1 " in proc.stderr, proc.stderr

    # An id no node ever announced: said so at once, with the ones that did.
    proc, took = run_submit("--node", "gw-9", "--type", "echo", "--broker", mosquitto.address)
    assert proc.returncode == 1
    assert (f"node gw-9 has never been seen on broker {mosquitto.address}"
            in proc.stderr), proc.stderr
    assert "known nodes: gw-1 (online)" in proc.stderr
    assert took < 10

    # Bad JSON input: a usage error that says what to fix, no coroutine warning.
    proc, _ = run_submit("--node", "gw-1", "--type", "echo", "--input", "{bad",
                         "--broker", mosquitto.address)
    assert proc.returncode == 2
    assert "--input is not valid JSON" in proc.stderr
    assert "never awaited" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    # Over HTTP: --url, the same reply document and exit codes.
    proc, _ = run_submit("--url", node.base_url, "--type", "hash", "--input",
                         json.dumps(HASH_INPUT))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"digest": expected_digest(**HASH_INPUT)}
    proc, _ = run_submit("--url", node.base_url, "--type", "warp")
    assert proc.returncode == 1 and json.loads(proc.stdout)["status"] == "rejected"


def test_a_client_whose_acl_hides_node_states_still_submits(tmp_path: Any,
                                                            node_factory: Any) -> None:
    """With broker credentials whose ACL does not let it read `P/node/+/state`, the client
    cannot look the node up: it says so and submits anyway (no false "never seen")."""
    import shutil

    from tests.support.broker import broker_workdir, free_port

    work = broker_workdir()  # readable by mosquitto after it drops root privileges
    for name in ("passwd", "acl"):
        (work / name).write_text("")
        (work / name).chmod(0o644)
    subprocess.run(["mosquitto_passwd", "-b", str(work / "passwd"), "client", "s3cret"],
                   check=True, capture_output=True, timeout=30)
    (work / "passwd").chmod(0o644)
    (work / "acl").write_text(
        "topic readwrite #\n"  # anonymous clients (the node): everything
        "user client\ntopic write edgesched/node/+/submit\ntopic read edgesched/client/#\n")
    port = free_port()
    broker = Mosquitto(workdir=work, port=port, conf_text=(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"password_file {work / 'passwd'}\nacl_file {work / 'acl'}\n"
        f"log_dest file {work / f'mosquitto-{port}.log'}\n"))
    broker.start()
    try:
        node_factory("gw-1", broker=broker)
        (tmp_path / "pw").write_text("s3cret\n")
        cfg = tmp_path / "client.yaml"
        cfg.write_text(f"mqtt: {{host: 127.0.0.1, port: {port}, username: client, "
                       f"password_file: {tmp_path / 'pw'}}}\n")
        proc, _ = run_submit("--config", str(cfg), "--node", "gw-1", "--type", "echo",
                             "--input", '"hi"', "--timeout", "20")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["result"] == "hi"
        assert "no node state is readable" in proc.stderr and "'client'" in proc.stderr
        assert "s3cret" not in proc.stderr + proc.stdout
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
