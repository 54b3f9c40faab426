"""The spool on a full disk: `state_dir` on a 256 KiB tmpfs. Every task is still answered
(once); what the spool could not keep is counted in edgesched_spool_shed_total, never lost
silently. And a corrupt spool is a clear error at start (exit 78, one line naming state_dir).

The tmpfs needs `mount` (root with CAP_SYS_ADMIN); without it the disk-full case is skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client import TaskClient
from tests.support.broker import Mosquitto
from tests.support.nodes import REPO, NodeProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted at teardown."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mount of a tmpfs not permitted: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10, check=False)


async def test_spool_on_a_full_disk_still_answers_every_task(
        mosquitto: Mosquitto, node_factory: Any, small_fs: Path) -> None:
    node: NodeProcess = node_factory("A", broker=mosquitto, overrides={
        "state_dir": str(small_fs / "state"),
        "executor": {"slots": 1, "queue_size": 200},
        "task_types": {"echo": {"offload": "local"}},
    })
    filler = "x" * (24 << 10)  # 24 KiB each: the 256 KiB filesystem fills after a few
    async with TaskClient(mosquitto) as client:
        keys = [await client.submit("A", {"type": "echo", "input": f"{i}:{filler}"})
                for i in range(40)]
        replies = await client.wait_all(keys, within_s=30)
        await asyncio.sleep(0.5)
    shed = sum(node.metric("edgesched_spool_shed_total", reason=r) or 0.0
               for r in ("full", "write_error"))
    print(f"\ndisk full: 40 submitted, {len(replies)} answered, "
          f"{sum(r['status'] == 'ok' for r in replies.values())} ok; spool shed {shed:g} "
          "(write_error)")
    assert all(len(client.replies[k]) == 1 for k in keys)
    assert [replies[k]["result"].split(":")[0] for k in keys] == [str(i) for i in range(40)]
    assert shed > 0, "the filesystem never filled: the test proves nothing"
    assert "not kept" in node.log_text()
    assert node.metric("edgesched_spool_tasks") == 0


def test_corrupt_spool_is_exit_78_naming_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "spool.sqlite").write_bytes(os.urandom(8192))
    config = tmp_path / "node.yaml"
    config.write_text(f"node_id: X\nstate_dir: {state}\nhttp: {{port: 0}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESCHED_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "edgesched", "run", "--config", str(config)],
                          capture_output=True, timeout=30, env=env, check=False)
    err = done.stderr.decode()
    assert done.returncode == 78, err
    assert err.strip().startswith("state_dir:") and "spool.sqlite" in err, err
    assert len(err.strip().splitlines()) == 1, err
