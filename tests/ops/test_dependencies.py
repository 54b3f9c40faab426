"""Dependency hygiene: amqtt only in the `demo` extra, and constraints.txt — the exact versions
the suite runs with — used by the Makefile and the Dockerfile (issue #18 part 8)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.ops.dockerfile import parse

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
REGENERATE = "regenerate it: bash scripts/lock-constraints.sh (docs/install.md)"


def _project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        project: dict[str, object] = tomllib.load(fh)["project"]
    return project


def _requirements() -> list[Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    names = [*project["dependencies"]]  # type: ignore[misc]
    for group in extras.values():
        names += group
    return [Requirement(r) for r in names]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def test_amqtt_is_only_in_the_demo_extra() -> None:
    project = _project()
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}  # type: ignore[attr-defined]
    assert "amqtt" not in runtime, "a gateway must not install the demo's broker"
    demo = project["optional-dependencies"]["demo"]  # type: ignore[index]
    assert [canonicalize_name(Requirement(r).name) for r in demo] == ["amqtt"]


def test_the_daemon_never_imports_amqtt() -> None:
    code = ("import sys, edgesched.cli, edgesched.node.service\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'amqtt'], 'amqtt'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_demo_without_amqtt_names_the_extra() -> None:
    code = ("import sys; sys.modules['amqtt'] = None  # as if not installed\n"
            "from edgesched.cli import main; sys.exit(main(['demo', '--duration', '1']))\n")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                          capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'edgesched[demo]'" in proc.stderr
    assert "--broker" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_constraints_pin_every_requirement_within_its_range() -> None:
    pins = _pins()
    assert "edgesched" not in pins
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # e.g. uvloop off Linux
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt: {REGENERATE}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside {req}: {REGENERATE}")


def test_the_suite_runs_with_the_pinned_versions() -> None:
    """constraints.txt is a tested resolution: the venv running this suite holds it."""
    differ = []
    for name, version in _pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            differ.append(f"{name}: pinned {version}, not installed")
            continue
        if installed != version:
            differ.append(f"{name}: pinned {version}, installed {installed}")
    assert differ == [], f"{REGENERATE}, or `make setup`:\n" + "\n".join(differ)


def test_makefile_installs_with_the_constraints() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "PIP_INSTALL := $(PY) -m pip install --quiet -c constraints.txt" in makefile
    assert "$(PIP_INSTALL) -e '.[dev,demo]'" in makefile, "make setup: the suite tests the demo"
    demo = re.search(r"^\$\(DEMO_STAMP\):.*?\n\n", makefile, re.S | re.M)
    assert demo and "$(PIP_INSTALL) -e '.[demo]'" in demo[0], "make demo installs .[demo]"
    assert re.search(r"^demo: \$\(DEMO_STAMP\)$", makefile, re.M)
    assert re.search(r"^lock: .*\n\tVENV=\$\(VENV\) bash scripts/lock-constraints.sh$",
                     makefile, re.M)


def test_dockerfile_installs_with_the_constraints() -> None:
    builder = parse(REPO / "Dockerfile")[0]
    copied = " ".join(ins.args for ins in builder.all("COPY"))
    assert "constraints.txt" in copied
    installs = [ins.args for ins in builder.all("RUN") if "pip" in ins.args]
    assert installs and all("-c constraints.txt" in args for args in installs), installs
    assert not any("[demo]" in args or "[dev" in args for args in installs), "no extras"
