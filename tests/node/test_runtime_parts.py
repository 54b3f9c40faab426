"""Small runtime parts: incarnation counter, /proc/stat sampling, sd_notify datagrams."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from edgesched.adapters.procstat import CpuSampler, read_cpu_times
from edgesched.adapters.systemd import Notifier
from edgesched.config import read_process_environment
from edgesched.node.service import next_incarnation
from tests.support.broker import Mosquitto


def test_incarnation_grows_even_when_the_clock_steps_back(tmp_path: Path) -> None:
    first = next_incarnation(tmp_path / "state", wall_ms=5_000)
    second = next_incarnation(tmp_path / "state", wall_ms=1_000)  # clock went back
    third = next_incarnation(tmp_path / "state", wall_ms=9_000)
    assert (first, second, third) == (5_000, 5_001, 9_000)
    assert (tmp_path / "state" / "incarnation").read_text().strip() == "9000"
    assert next_incarnation(None, wall_ms=123) == 123


def test_cpu_sampler_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    sampler = CpuSampler(stat)
    stat.write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # 100 busy of 200 jiffies
    assert sampler.sample() == 0.5
    assert read_cpu_times(tmp_path / "missing") is None
    assert CpuSampler(tmp_path / "missing").sample() == 0.0
    assert 0.0 <= CpuSampler().sample() <= 1.0  # the real /proc/stat


async def test_notifier_sends_datagrams_and_pings_the_watchdog(tmp_path: Path) -> None:
    name = f"@edgesched-test-{os.getpid()}"  # abstract socket: no path length trouble
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.setblocking(False)
    try:
        env = read_process_environment({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "100000"})
        notifier = Notifier(env)
        assert notifier.watchdog_interval_s == 0.05
        async with notifier:
            notifier.ready("up")
            await asyncio.sleep(0.18)
            notifier.stopping()
        got = []
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        sock.close()
    assert got[0] == "READY=1\nSTATUS=up" and got[-1] == "STOPPING=1"
    assert got.count("WATCHDOG=1") >= 3


def test_notifier_is_a_noop_without_systemd() -> None:
    notifier = Notifier(read_process_environment({}))
    assert not notifier.enabled and notifier.ready() is False
    other_pid = read_process_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                                          "WATCHDOG_PID": str(os.getpid() + 1)})
    assert Notifier(other_pid).watchdog_interval_s is None  # the watchdog is someone else's


def test_link_reading_feeder_feeds_only_mapped_devices() -> None:
    from edgesched.core.estimators import EstimatorBank
    from edgesched.node.telemetry import LinkReadingFeeder

    bank = EstimatorBank()
    prior = bank.link("cloud", 0.0)
    feed = LinkReadingFeeder(bank, {"modem": "cloud"})
    for i in range(20):
        feed("modem", {"rtt_s": 0.2, "uplink_bps": 1e6}, float(i))
        feed("sensor-7", {"rtt_s": 5.0, "uplink_bps": 10.0}, float(i))
    learned = bank.link("cloud", 20.0)
    assert learned.rtt_s == pytest.approx(0.2, rel=0.2) and learned.rtt_s != prior.rtt_s
    assert learned.bandwidth_bps == pytest.approx(1e6, rel=0.2)
    assert len(bank) == 1  # sensor-7 got no estimator


def test_uplink_device_is_wired_to_the_cloud_link(tmp_path: Path) -> None:
    from edgesched.config import load_settings
    from edgesched.core.candidates import CLOUD_ID
    from edgesched.node.service import build_runtime

    cfg = tmp_path / "c.yaml"
    cfg.write_text("node_id: n1\nhttp: {port: 0}\ndevices: {uplink_device: modem}\n")
    rt = build_runtime(load_settings(cfg), process_env=read_process_environment({}))
    assert rt.uplink_feeder is not None and rt.pipeline.bank is rt.bank
    prior = rt.bank.link(CLOUD_ID, 0.0)
    for i in range(20):
        rt.uplink_feeder("modem", {"rtt_s": 0.9, "uplink_bps": 1e5}, float(i))
    assert rt.pipeline.bank.link(CLOUD_ID, 20.0).rtt_s == pytest.approx(0.9, rel=0.2)
    assert prior.rtt_s != pytest.approx(0.9, rel=0.2)
    plain = tmp_path / "p.yaml"
    plain.write_text("node_id: n2\nhttp: {port: 0}\n")
    assert build_runtime(load_settings(plain),
                         process_env=read_process_environment({})).uplink_feeder is None


def test_the_cloud_link_starts_from_the_nominal_uplink(tmp_path: Path) -> None:
    """cloud.rtt_s / cloud.bandwidth_bps are the cloud link's prior, and with it what a probe
    calls degraded: a satellite uplink configured as such is not probed for being slow."""
    from edgesched.config import load_settings
    from edgesched.core.candidates import CLOUD_ID
    from edgesched.core.probing import ProbeParams, degraded
    from edgesched.node.pipeline import CLOUD_LINK_PRIOR
    from edgesched.node.service import build_runtime

    cfg = tmp_path / "c.yaml"
    cfg.write_text("node_id: n1\nhttp: {port: 0}\n"
                   "cloud: {url: 'http://127.0.0.1:9', rtt_s: 0.6, bandwidth_bps: 2.0e6}\n")
    rt = build_runtime(load_settings(cfg), process_env=read_process_environment({}))
    link = rt.bank.link(CLOUD_ID, 0.0)
    assert (link.rtt_s, link.bandwidth_bps) == (0.6, 2e6)
    assert rt.bank.link_prior(CLOUD_ID) == link
    assert not degraded(link, rt.bank.link_prior(CLOUD_ID), ProbeParams())
    assert degraded(link, CLOUD_LINK_PRIOR, ProbeParams())  # against the default it would be


def test_the_object_graph_is_built_once_and_wired_explicitly(tmp_path: Path) -> None:
    """Every component is constructed by build_runtime with its collaborators: the
    telemetry stage publishes the executor's load from the start (no placeholder), the
    pipeline and the stage share the runtime's executor and bank, the HTTP server already
    serves the pipeline's route and status section, and the graph is frozen."""
    import dataclasses

    from edgesched.config import load_settings
    from edgesched.node.service import build_runtime, components

    cfg = tmp_path / "c.yaml"
    cfg.write_text("node_id: n1\nhttp: {port: 0}\nexecutor: {slots: 3}\n")
    rt = build_runtime(load_settings(cfg), process_env=read_process_environment({}))
    assert rt.pipeline.executor is rt.executor and rt.pipeline.bank is rt.bank
    assert rt.executor.load().slots == 3 and rt.telemetry.local_state().slots == 3
    assert rt.status.doc()["tasks"]["slots"] == 3
    paths = {r.resource.canonical for r in rt.http.app.router.routes() if r.resource}
    assert "/v1/tasks" in paths
    assert components(rt) == [rt.notifier, rt.stall_guard, rt.mqtt, rt.telemetry,
                              rt.pipeline, rt.http]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rt.pipeline = rt.pipeline  # type: ignore[misc]


async def test_run_hands_the_built_graph_to_the_hook_and_serves_it(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """In process: `run()` builds the graph, gives it to `runtime_hook` before anything
    starts, serves the pipeline's section of /v1/status and its route over the HTTP server it
    was built with, and stops cleanly (drain, then the components in reverse)."""
    import aiohttp

    from edgesched.config import load_settings
    from edgesched.node.service import Runtime, run

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"node_id: n1\nhttp: {{port: 0}}\nexecutor: {{slots: 2}}\n"
                   f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}}}\n")
    got: list[Runtime] = []
    hooked_before_start: list[bool] = []

    def hook(rt: Runtime) -> None:
        got.append(rt)
        hooked_before_start.append(rt.http.bound_port is None and not rt.mqtt.connected)

    stop = asyncio.get_running_loop().create_future()
    node = asyncio.create_task(run(load_settings(cfg), stop, runtime_hook=hook,
                                   process_env=read_process_environment({})))
    try:
        for _ in range(400):  # 20 s at most
            if got and got[0].http.bound_port is not None and got[0].mqtt.connected:
                break
            await asyncio.sleep(0.05)
        rt = got[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(rt.http.base_url + "/v1/status") as resp:
                status = await resp.json()
            async with session.post(rt.http.base_url + "/v1/tasks",
                                    json={"type": "echo", "input": {"x": 1}}) as resp:
                reply = await resp.json()
        assert hooked_before_start == [True]
        assert status["node_id"] == "n1" and status["tasks"]["slots"] == 2
        assert status["mqtt"]["connected"] is True and "scheduler" in status
        assert reply["status"] == "ok" and reply["executed_by"] == "n1"
    finally:
        stop.set_result(None)
        assert await asyncio.wait_for(node, 20) == 0
    assert not got[0].mqtt.connected and got[0].pipeline.closing
