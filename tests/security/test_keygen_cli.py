"""`edgesched keygen` and what check-config / run say about unusable signing keys."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def edgesched(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgesched", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_keygen_writes_a_usable_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    done = edgesched("keygen", "gw-1", "--dir", str(keys))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((keys / "gw-1.key").stat().st_mode) == 0o600
    assert "security.key_file" in done.stdout and "security.trust_dir" in done.stdout
    again = edgesched("keygen", "gw-1", "--dir", str(keys))
    assert again.returncode == 1 and "--force" in again.stderr
    assert edgesched("keygen", "gw-1", "--dir", str(keys), "--force").returncode == 0

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"node_id: gw-1\nsecurity: {{key_file: {keys / 'gw-1.key'}, "
                   f"trust_dir: {keys}}}\n")
    ok = edgesched("check-config", "--config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert "BEGIN PRIVATE KEY" not in ok.stdout


def test_unusable_keys_are_configuration_errors(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert edgesched("keygen", "gw-2", "--dir", str(keys)).returncode == 0
    cases = {
        "key_file without trust_dir": f"security: {{key_file: {keys / 'gw-2.key'}}}",
        "missing key": f"security: {{key_file: {tmp_path / 'nope.key'}, trust_dir: {keys}}}",
        "public key as private": f"security: {{key_file: {keys / 'gw-2.pem'}, "
                                 f"trust_dir: {keys}}}",
        "someone else's listing": f"node_id: gw-1\nsecurity: {{key_file: {keys / 'gw-2.key'}, "
                                  f"trust_dir: {keys}}}",
    }
    assert edgesched("keygen", "gw-3", "--dir", str(tmp_path / "other")).returncode == 0
    (keys / "gw-1.pem").write_bytes((tmp_path / "other" / "gw-3.pem").read_bytes())
    for what, text in cases.items():
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(("" if "node_id" in text else "node_id: gw-2\n") + text + "\n")
        for command in ("check-config", "run"):
            done = edgesched(command, "--config", str(cfg))
            assert done.returncode == 78, (what, command, done.stderr)
            assert "security" in done.stderr and "Traceback" not in done.stderr, done.stderr
