"""The demo's cluster launcher: a node that cannot start is reported with its log, and reaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesched.demo.cluster import (
    BrokerAddress,
    Cluster,
    ClusterError,
    ClusterSpec,
    NodeSpec,
    WanSpec,
)

pytestmark = pytest.mark.e2e


def _spec(config: dict[str, object]) -> ClusterSpec:
    wan = WanSpec(rtt_s=0.01, uplink_bps=1e7)
    return ClusterSpec(
        nodes=(NodeSpec(node_id="cloud", role="cloud", description="", config=config),),
        wan_normal=wan, wan_degraded=wan,
    )


async def test_a_node_with_a_bad_config_fails_with_its_log(tmp_path: Path) -> None:
    broker = BrokerAddress(host="127.0.0.1", port=1, protocol="3.1.1", topic_prefix="t")
    cluster = Cluster(_spec({"executor": {"slots": 0}}), broker=broker, workdir=tmp_path)
    cluster.write_configs()
    async with cluster:
        await cluster.start("cloud")
        with pytest.raises(ClusterError) as info:
            await cluster.wait_healthy("cloud", timeout_s=60)
    message = str(info.value)
    assert "exited (code 78)" in message
    assert "executor.slots" in message  # the node's own config error, from its log
    assert not cluster.nodes["cloud"].alive


async def test_a_node_whose_port_was_taken_moves_to_a_free_one(tmp_path: Path) -> None:
    import socket

    from edgesched.adapters.embedded_broker import EmbeddedBroker

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        async with EmbeddedBroker() as mqtt:
            broker = BrokerAddress(host="127.0.0.1", port=mqtt.port, protocol="3.1.1",
                                   topic_prefix="t")
            cluster = Cluster(_spec({}), broker=broker, workdir=tmp_path)
            cluster.allocate_ports()
            cluster._ports["cloud"] = taken  # as if someone bound it after we chose it
            cluster.write_configs()
            async with cluster:
                await cluster.start_healthy("cloud")
                assert cluster.http_port("cloud") != taken
                assert cluster.nodes["cloud"].alive
                assert cluster.nodes["cloud"].starts == 2
            assert not cluster.nodes["cloud"].alive
