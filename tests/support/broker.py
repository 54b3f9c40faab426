"""A real mosquitto process on a free loopback port, restartable for reconnect tests."""

from __future__ import annotations

import grp
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


LISTEN_PORTS = range(20_000, 32_768)  # below Linux's ephemeral range (32768-60999)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    """This test process's share of LISTEN_PORTS: pytest-xdist workers (gw0, gw1, ...) each
    take their own slice, so two workers never pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = len(LISTEN_PORTS) // max(1, count)
    start = LISTEN_PORTS.start + size * (index % max(1, count))
    return range(start, start + size)


def free_listen_port(host: str = "127.0.0.1") -> int:
    """A free port below Linux's ephemeral range, not handed out before by this process.

    `free_port()` hands out a port of the ephemeral range, which the kernel also gives to
    every outgoing connection: between the pick and a slow child process binding it (30
    nodes starting at once on a loaded machine take seconds), another process's connection
    can take it. Ports below the range are only ever taken by an explicit bind; each xdist
    worker picks from its own slice of them (`_worker_ports`), and never the same one twice
    (a node picks its port long before its process binds it): two picks of one port by two
    nodes starting at once failed a run with "address already in use"."""
    ports = _worker_ports()
    if len(_handed_out) > len(ports) // 2:
        _handed_out.clear()  # long since bound and released
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(ports.start, ports.stop)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    return free_port(host)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError("mosquitto is not installed: run `make system-deps` (as root)")
    return found


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Mosquitto:
    """One mosquitto broker; `stop()`/`start()` keep the same port."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_listen_port)
    extra_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None
    conf_text: str | None = None  # a whole config, used as given (see deployment_conf)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"mosquitto-{self.port}.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        if self.conf_text is not None:
            conf.write_text(self.conf_text)
            self._launch(conf)
            return
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_keepalive 65535\n"
            # as recommended for production brokers in docs/running.md: small request/reply
            # messages must not wait for delayed ACKs
            "set_tcp_nodelay true\n"
            f"log_dest file {self.workdir / f'mosquitto-{self.port}.log'}\n"
            + self.extra_conf
        )
        self._launch(conf)

    def _launch(self, conf: Path) -> None:
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            code = self.proc.poll()
            raise RuntimeError(f"mosquitto did not listen on {self.address} (exit code {code}):"
                               f"\n{self.log_text()[-2000:]}") from None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, so with `persistence true` only what mosquitto had
        already saved (see `durable_persistence_conf`) survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def durable_persistence_conf(workdir: Path) -> str:
    """`extra_conf` for a broker whose store is current when it is killed (SIGKILL).

    mosquitto 2.0 keeps its store in memory and writes it on a clean exit and every
    `autosave_interval` seconds; with `autosave_on_changes true` the interval counts changes
    instead, so 1 writes the store after every change (every message, PUBACK, subscription)."""
    return (f"persistence true\npersistence_location {workdir}/\n"
            "autosave_interval 1\nautosave_on_changes true\n")


# The documented replacements that turn the shipped packaging/mosquitto/edgesched.conf into a
# test broker's config: nothing else of the file changes. Each original string must occur
# exactly once, so a changed shipped file fails here instead of silently testing something else.
def deployment_conf(shipped: str, *, port: int, host: str, certs_dir: Path, acl_file: Path,
                    workdir: Path) -> str:
    """The shipped broker config with only the port (bound to `host`), the certificate and ACL
    paths, and the persistence/log locations replaced."""
    replacements = {
        "listener 8883\n": f"listener {port} {host}\n",
        "/etc/mosquitto/certs/": f"{certs_dir}/",
        "acl_file /etc/mosquitto/edgesched.acl\n": f"acl_file {acl_file}\n",
        "persistence_location /var/lib/mosquitto/\n": f"persistence_location {workdir}/\n",
        "log_dest file /var/log/mosquitto/mosquitto.log\n":
            f"log_dest file {workdir / f'mosquitto-{port}.log'}\n",
    }
    text = shipped
    for old, new in replacements.items():
        count = text.count(old)
        if old == "/etc/mosquitto/certs/":
            if count != 3:
                raise AssertionError(f"expected cafile/certfile/keyfile under {old}, found {count}")
        elif count != 1:
            raise AssertionError(f"{old!r} occurs {count} times in the shipped config, not once")
        text = text.replace(old, new)
    return text


def broker_workdir(parent: Path | None = None) -> Path:
    """A scratch directory mosquitto can still use after dropping root privileges.

    mosquitto started as root switches to the `mosquitto` user before it opens its log, ACL
    and persistence files, so as root the directory (made outside pytest's 0700 tmp tree)
    belongs to group mosquitto, like /etc/mosquitto and /var/lib/mosquitto in a real install.
    The caller removes it (shutil.rmtree).
    """
    path = Path(tempfile.mkdtemp(prefix="edgesched-broker-", dir=parent))
    gid = _mosquitto_gid()
    if gid is not None:
        os.chown(path, 0, gid)
        path.chmod(0o770)
    return path


def install_broker_files(pki_dir: Path, workdir: Path) -> tuple[Path, Path]:
    """Copy dev-pki's ca.pem, broker.pem, broker.key and edgesched.acl the way the install
    steps of docs/security.md do; returns (certs_dir, acl_file)."""
    certs = workdir / "certs"
    certs.mkdir(exist_ok=True)
    gid = _mosquitto_gid()
    for name, mode in (("ca.pem", 0o644), ("broker.pem", 0o644), ("broker.key", 0o640)):
        target = certs / name
        shutil.copyfile(pki_dir / name, target)
        if gid is not None:
            os.chown(target, 0, gid)
        target.chmod(mode)
    if gid is not None:
        os.chown(certs, 0, gid)
        certs.chmod(0o750)
    acl = workdir / "edgesched.acl"
    shutil.copyfile(pki_dir / "edgesched.acl", acl)
    acl.chmod(0o644)
    return certs, acl


def _mosquitto_gid() -> int | None:
    """The mosquitto group when running as root (None: no privilege drop will happen)."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return None
