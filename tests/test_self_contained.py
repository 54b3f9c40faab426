"""The repository owns its contract: nothing in it points at files outside it."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO

OUTSIDE = re.compile(r"CONTRACTS(\.md)?\b|DESIGN\.md|\.\./shared/|shared/(CONTRACTS|DESIGN)")


def test_no_tracked_file_points_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".service", ""}:
            continue
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        offenders += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line) and name != "tests/test_self_contained.py"]
    assert not offenders, offenders


def test_the_contract_page_names_every_command() -> None:
    text = (REPO / "docs" / "contract.md").read_text("utf-8")
    from edgesched.cli import COMMANDS

    missing = [name for name in COMMANDS if f"edgesched {name}" not in text]
    assert not missing, missing
