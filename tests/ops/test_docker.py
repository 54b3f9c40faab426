"""The Dockerfile: lint, the rules of the image, and its build steps replayed without Docker.

No Docker engine exists in CI, so `test_build_steps_replayed` reads the Dockerfile and performs
its builder stage on this machine: the host's Python stands in for the base image, and every
container path the Dockerfile names (/opt/edgesched, /src, /etc/edgesched, ...) lives under a
scratch root. The RUN commands run verbatim through /bin/sh. Then the runtime stage's COPYs are
applied and the installed `edgesched` runs `version` and `check-config` with the image's config
and environment, then runs as the container would (ENTRYPOINT + CMD, against a real mosquitto)
until the image's own HEALTHCHECK command says healthy. A broken install step, a missing file in
the build context, a config that does not validate or a wrong HEALTHCHECK fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.dockerfile import (
    Instruction,
    Stage,
    dockerignore_keeps,
    env_pairs,
    expand,
    parse,
)
from tests.support.broker import Mosquitto, free_listen_port
from tests.support.nodes import wait_until

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# Directories of the base image that the host provides as they are.
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib", "/tmp/", "/dev/", "/proc/")


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.fail("hadolint not found: install the dev extra (`pip install -e '.[dev]'`)")
    return found


def test_hadolint_is_clean() -> None:
    proc = subprocess.run(
        [_hadolint(), "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_image_rules() -> None:
    stages = parse(DOCKERFILE)
    assert len(stages) >= 2, "multi-stage: a builder stage and a slim runtime stage"
    runtime = stages[-1]
    assert runtime.all("COPY"), "the runtime stage copies the venv from the builder"
    assert any("--from=" in ins.args for ins in runtime.all("COPY"))
    assert not any("pip" in ins.args for ins in runtime.all("RUN")), "no install in runtime"

    user = runtime.all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"final USER must be numeric, non-zero: {user}"
    assert not gid or (gid.isdigit() and int(gid) > 0)

    entrypoint = runtime.all("ENTRYPOINT")[-1].exec_form()
    assert entrypoint and entrypoint[0] == "edgesched", "exec-form ENTRYPOINT"
    health = runtime.all("HEALTHCHECK")[-1].args
    argv = _healthcheck_argv(health)
    assert argv[:2] == ["edgesched", "healthcheck"], health

    env = dict(pair for ins in runtime.all("ENV") for pair in env_pairs(ins))
    assert env["EDGESCHED_CONFIG"] == "/etc/edgesched/edgesched.yaml"
    assert env["CREDENTIALS_DIRECTORY"] == "/run/secrets"


def _healthcheck_argv(args: str) -> list[str]:
    _, _, command = args.partition("CMD ")
    argv = Instruction(keyword="CMD", args=command.strip(), line=0).exec_form()
    assert argv is not None, "HEALTHCHECK CMD in exec form"
    return [str(word) for word in argv]


def test_build_context_holds_every_copied_file() -> None:
    for stage in parse(DOCKERFILE):
        for ins in stage.all("COPY"):
            if "--from=" in ins.args:
                continue
            *sources, _ = [w for w in ins.args.split() if not w.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"line {ins.line}: {source} does not exist"
                assert dockerignore_keeps(REPO / ".dockerignore", source), (
                    f"line {ins.line}: {source} is excluded by .dockerignore"
                )


class Replay:
    """Performs Dockerfile instructions on the host, container paths under `root`."""

    def __init__(self, root: Path, shim: Path, home: Path) -> None:
        self.root = root
        self.workdir = root
        self.env: dict[str, str] = {
            key: value for key, value in os.environ.items()
            if key.startswith("PIP_") or key in ("SSL_CERT_FILE", "LANG", "TZ")
        }
        self.env |= {"PATH": f"{shim}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}

    def host(self, container_path: str) -> Path:
        if container_path.startswith(SYSTEM_PREFIXES):
            return Path(container_path)
        return self.root / container_path.lstrip("/")

    def map_value(self, raw: str) -> str:
        """Map literal absolute paths of an ENV value, then expand its variables."""
        parts = [self.host(part).as_posix() if part.startswith("/") else part
                 for part in raw.split(":")]
        return expand(":".join(parts), self.env)

    def apply(self, stage: Stage, *, run: bool) -> None:
        for ins in stage.instructions:
            if ins.keyword == "ENV":
                for key, value in env_pairs(ins):
                    self.env[key] = self.map_value(value)
            elif ins.keyword == "WORKDIR":
                self.workdir = self.host(expand(ins.args, self.env))
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                self.copy(ins)
            elif ins.keyword == "RUN" and run:
                self.run(ins)

    def copy(self, ins: Instruction) -> None:
        words = [w for w in ins.args.split() if not w.startswith("--")]
        from_stage = "--from=" in ins.args
        *sources, dest = words
        target = self.host(dest) if dest.startswith("/") else self.workdir / dest
        for source in sources:
            origin = self.host(source) if from_stage else REPO / source
            if origin.resolve() == target.resolve():
                continue  # same path in both stages: our root already holds it
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest_file = target / origin.name if dest.endswith("/") else target
                dest_file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, dest_file)

    def run(self, ins: Instruction) -> None:
        literal_paths = re.findall(r"(?<![\w$}./-])/[A-Za-z]\S*", ins.args)
        assert not literal_paths, (
            f"line {ins.line}: builder RUN uses absolute paths {literal_paths}; "
            "use $VIRTUAL_ENV or paths relative to WORKDIR so this replay stays faithful"
        )
        proc = subprocess.run(
            ["/bin/sh", "-ec", ins.args], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=480, check=False,
        )
        assert proc.returncode == 0, (
            f"Dockerfile line {ins.line} failed ({proc.returncode}): {ins.args}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_steps_replayed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    stages = parse(DOCKERFILE)
    builder, runtime = stages[0], stages[-1]
    shim = tmp_path / "base-image-bin"
    shim.mkdir()
    # The base image's `python`: the interpreter this venv was made from.
    (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    replay = Replay(tmp_path / "rootfs", shim, tmp_path / "home")
    replay.apply(builder, run=True)

    image = Replay(replay.root, shim, tmp_path / "home")
    image.apply(runtime, run=False)  # runtime RUNs need root-owned system paths; see below
    for ins in runtime.all("RUN"):
        check = subprocess.run(["/bin/sh", "-n", "-c", ins.args], check=False)
        assert check.returncode == 0, f"line {ins.line}: shell syntax error"

    secrets = Path(image.env["CREDENTIALS_DIRECTORY"])
    secrets.mkdir(parents=True)
    (secrets / "mqtt_password").write_text("s3cret-from-docker-secret\n")
    exe = shutil.which("edgesched", path=image.env["PATH"])
    assert exe and exe.startswith(str(replay.root)), f"edgesched not on the image PATH: {exe}"
    refused = _image_run(image, [exe, "check-config"], check=False)
    assert refused.returncode == 78, "0.0.0.0 without the http_token secret: protected mode"
    assert "http.host" in refused.stderr and "http.token_file" in refused.stderr, refused.stderr
    (secrets / "http_token").write_text("t0ken-from-docker-secret-0123456789\n")

    version = _image_run(image, [exe, "version"])
    assert version.stdout.startswith("edgesched "), version.stdout
    checked = _image_run(image, [exe, "check-config"])
    assert "host: 0.0.0.0" in checked.stdout, "http.host must be 0.0.0.0 in a container"
    assert "s3cret" not in checked.stdout and "t0ken" not in checked.stdout
    assert "password: '********'" in checked.stdout, "the Docker secret is picked up, masked"
    (secrets / "mqtt_password").unlink()  # the test broker takes anonymous clients
    _run_like_a_container(image, runtime, mosquitto)


def _run_like_a_container(image: Replay, runtime: Stage, broker: Mosquitto) -> None:
    """ENTRYPOINT + CMD with the image's environment; then its HEALTHCHECK must say healthy."""
    entrypoint = runtime.all("ENTRYPOINT")[-1].exec_form() or []
    cmd = runtime.all("CMD")[-1].exec_form() or []
    health = _healthcheck_argv(runtime.all("HEALTHCHECK")[-1].args)
    state_dir = image.host("/var/lib/edgesched")
    state_dir.mkdir(parents=True, exist_ok=True)
    # What `docker run -e ...` would set: the broker's address, a free port (the host may
    # already use 8470), and the state volume's place under our scratch root.
    env = image.env | {
        "EDGESCHED_NODE_ID": "gw-image", "EDGESCHED_MQTT__HOST": broker.host,
        "EDGESCHED_MQTT__PORT": str(broker.port), "EDGESCHED_HTTP__PORT": str(free_listen_port()),
        "EDGESCHED_STATE_DIR": str(state_dir),
    }
    argv = [_on_path(entrypoint[0], env), *entrypoint[1:], *cmd]
    log_path = image.root / "daemon.log"  # a file, not a pipe nobody drains while it runs
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(argv, env=env, cwd=image.root, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            assert daemon.poll() is None, f"the image's daemon exited {daemon.returncode}"
            try:
                probe = subprocess.run([_on_path(health[0], env), *health[1:]], env=env,
                                       capture_output=True, text=True, timeout=30, check=False)
            except subprocess.TimeoutExpired:
                return False  # a loaded CI machine: Docker would retry the probe too
            return probe.returncode == 0

        wait_until(healthy, 90, interval=0.3, what="the image's HEALTHCHECK passes")
        assert (state_dir / "incarnation").is_file(), "state_dir is used"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
    output = log_path.read_text(errors="replace")
    assert '"level": "error"' not in output, output[-3000:]


def _on_path(name: str, env: dict[str, str]) -> str:
    found = shutil.which(name, path=env["PATH"])
    assert found, f"{name} is not on the image's PATH"
    return found


def _image_run(image: Replay, argv: list[str],
               check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=image.env, capture_output=True, text=True, timeout=180,
                          cwd=image.root, check=False)
    if check:
        assert proc.returncode == 0, f"{argv[1:]} exited {proc.returncode}: {proc.stderr}"
    return proc
