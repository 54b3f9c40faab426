"""`edgesched status` rendering and the default URL taken from the config."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgesched.node.client import base_url, render_status


def test_render_status_tables(capsys: pytest.CaptureFixture[str]) -> None:
    render_status({
        "node_id": "gw-1", "role": "edge", "incarnation": 7, "mqtt": {"connected": True},
        "tasks": {"running": 1, "queued": 2},
        "neighbours": [{"node_id": "gw-2", "status": "suspect", "last_seen_s": 3.5,
                        "running": 0, "queued": 0, "slots": 2, "cpu_util": 0.25,
                        "battery": None}],
        "devices": [{"device_id": "cam-1", "last_seen_s": 0.1,
                     "values": {"battery": 0.8, "rtt_s": 0.012}}],
        "devices_total": 1,
    })
    out = capsys.readouterr().out
    for text in ("gw-1", "gw-2", "suspect", "cam-1", "battery=0.8", "rtt_s=0.012"):
        assert text in out


def test_base_url_from_flag_or_config(tmp_path: Path) -> None:
    assert base_url(argparse.Namespace(url="http://h:1/", config=None)) == "http://h:1"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http: {host: 0.0.0.0, port: 9999, allow_unauthenticated: true}\n")
    assert base_url(argparse.Namespace(url=None, config=str(cfg))) == "http://127.0.0.1:9999"
