"""Configuration: one frozen, validated pydantic-settings tree (defaults < YAML file < env).

This is the only module that reads `os.environ`. Everything else receives a `Settings` (or a
plain parameter object derived from it) from the composition root.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgesched.core.costmodel import CostParams
from edgesched.core.fallback import FallbackParams
from edgesched.core.policies import POLICY_NAMES
from edgesched.errors import ConfigError

ENV_PREFIX = "EDGESCHED_"
CONFIG_ENV_VAR = "EDGESCHED_CONFIG"
DEFAULT_HTTP_PORT = 8470
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MASK = "********"
BUILTIN_TYPES = ("echo", "hash", "matmul", "sleep")

_NODE_ID_RE = re.compile(NODE_ID_PATTERN)
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables of the daemon's own process that no task handler may see or be given.
DAEMON_ONLY_ENV = frozenset({
    "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID",
})
DEFAULT_HANDLER_PATH = "/usr/local/bin:/usr/bin:/bin"
_USERINFO_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables of the daemon's own process that no task handler may see or be given.
DAEMON_ONLY_ENV = frozenset({
    "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID",
})
DEFAULT_HANDLER_PATH = "/usr/local/bin:/usr/bin:/bin"


def default_node_id() -> str:
    """The host name, made into a valid node id (invalid characters become '-')."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
    return name or "edgesched"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_secret_path(path: Path, credentials_dir: str | None) -> Path:
    """Relative secret paths live in systemd's $CREDENTIALS_DIRECTORY when it is set."""
    if not path.is_absolute() and credentials_dir:
        return Path(credentials_dir) / path
    return path


def _read_secret(path: Path, credentials_dir: str | None) -> SecretStr:
    resolved = _resolve_secret_path(path, credentials_dir)
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read secret file {resolved}: {exc.strerror}") from None
    return SecretStr(text.rstrip("\r\n"))


def _credential_file(value: Path | None) -> Path | None:
    """A file setting (certificate, CA): relative paths resolve like secrets; it must exist."""
    if value is None:
        return None
    path = _resolve_secret_path(value, os.environ.get("CREDENTIALS_DIRECTORY"))
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


def _implicit_credential(name: str) -> Path | None:
    """A credential systemd passed with LoadCredential=NAME, when no file is configured."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / name).is_file():
        return Path(directory) / name
    return None


class MqttTlsSettings(_Section):
    """TLS to the broker: server verified against `ca_file`; a client certificate (mTLS)
    when `cert_file` and `key_file` are both given. Relative paths resolve in
    $CREDENTIALS_DIRECTORY, like the other secrets (docs/security.md)."""

    ca_file: Path | None = Field(None, description="CA bundle (PEM) that signed the broker")
    cert_file: Path | None = Field(None, description="client certificate (PEM), for mTLS")
    key_file: Path | None = Field(None, description="client private key (PEM), for mTLS")
    check_hostname: bool = Field(True, description="the broker certificate must name mqtt.host")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = _resolve_secret_path(value, os.environ.get("CREDENTIALS_DIRECTORY"))
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        return path

    @model_validator(mode="after")
    def _pairs(self) -> MqttTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both (mTLS) or neither")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("a client certificate needs ca_file too (to verify the broker)")
        if self.ca_file is not None:  # what the adapter loads on connect, checked up front
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"ca_file {self.ca_file} is not a PEM CA certificate: "
                                 f"{exc}") from None
            if self.cert_file is not None and self.key_file is not None:
                try:
                    context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
                except (ssl.SSLError, OSError, ValueError) as exc:
                    raise ValueError(f"cannot load cert_file {self.cert_file} with key_file "
                                     f"{self.key_file} (not PEM, encrypted, or not a pair): "
                                     f"{exc}") from None
        return self

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password_file: Path | None = None
    topic_prefix: str = Field("edgesched", min_length=1, max_length=128)
    keepalive_s: int = Field(10, ge=2, le=3600)
    client_id: str | None = Field(None, description="default: edgesched-<node_id>")
    max_payload_bytes: int = Field(1 << 20, ge=256, le=256 << 20)
    incoming_queue: int = Field(10_000, ge=16, le=10_000_000)
    reconnect_initial_s: float = Field(0.5, gt=0, le=60)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    session_expiry_s: int = Field(
        3600, ge=0, le=4_294_967_295,
        description="persistent session: the broker queues QoS 1 messages this long while "
                    "the node is away (0 = clean session on every connect)")
    tls: MqttTlsSettings = MqttTlsSettings()

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        if isinstance(value, int | float):
            return {5: "5", 3.1: "3.1.1", 311: "3.1.1"}.get(value, str(value))
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_has_no_wildcards(cls, value: str) -> str:
        if any(ch in value for ch in "+#\x00") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must not contain '+', '#' or NUL, nor start or end with '/'")
        return value

    @model_validator(mode="after")
    def _load_password(self) -> MqttSettings:
        path = self.password_file or _implicit_credential("mqtt_password")
        if path is not None:
            self._password = _read_secret(path, os.environ.get("CREDENTIALS_DIRECTORY"))
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password


class SecuritySettings(_Section):
    """Signed node-to-node messages (docs/security.md)."""

    key_file: Path | None = Field(None, description="this node's Ed25519 private key (PEM)")
    trust_dir: Path | None = Field(None, description="NODE_ID.pem public keys of the cluster")
    max_clock_skew_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _key_and_trust(self) -> SecuritySettings:
        if (self.key_file is None) != (self.trust_dir is None):
            raise ValueError("set both key_file and trust_dir (this node's key and its peers' "
                             "public keys), or neither")
        key, trust = self.key_path, self.trust_path
        if key is not None and not key.is_file():
            raise ValueError(f"key_file {key} does not exist; make one with `edgesched keygen "
                             "NODE_ID --dir DIR`")
        if trust is not None and not trust.is_dir():
            raise ValueError(f"trust_dir {trust} is not a directory of NODE_ID.pem files")
        return self

    @property
    def key_path(self) -> Path | None:
        """`key_file`, resolved in systemd's $CREDENTIALS_DIRECTORY when relative."""
        if self.key_file is None:
            return None
        return _resolve_secret_path(self.key_file, os.environ.get("CREDENTIALS_DIRECTORY"))

    @property
    def trust_path(self) -> Path | None:
        """`trust_dir` as given: public keys are no secret, so not a systemd credential."""
        return self.trust_dir


class IntakeSettings(_Section):
    """What the node accepts from clients and where it may send their replies."""

    result_cache_bytes: int = Field(16 << 20, ge=0, le=4 << 30)
    reply_topics: tuple[str, ...] = Field(
        ("#",), description="MQTT filters a reply_to / response topic must match"
    )
    shed_after_s: float = Field(
        0.1, ge=0, le=60, description="an MQTT submission that waited longer than this "
        "between the socket and the intake (the event loop is behind) is answered rejected, "
        "reason overloaded, unread; 0 = never shed")


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported: give an unencrypted PEM key")


class HttpTlsSettings(_Section):
    """HTTPS for the node's API; relative paths resolve in $CREDENTIALS_DIRECTORY."""

    cert_file: Path | None = Field(None, description="server certificate (chain), PEM")
    key_file: Path | None = Field(None, description="its private key, PEM (unencrypted)")
    client_ca_file: Path | None = Field(
        None, description="CA of client certificates: when set, every client must present one"
    )

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _resolve(cls, value: Path | None) -> Path | None:
        return _credential_file(value)

    @model_validator(mode="after")
    def _complete(self) -> HttpTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (client "
                             "certificates are checked only over TLS)")
        if self.cert_file is not None and self.key_file is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
                if self.client_ca_file is not None:
                    context.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"cannot load the TLS certificate, key or client CA: "
                                 f"{exc}") from None
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1: only this machine can connect."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535, description="0 = any free port")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=256 << 20)
    token_file: Path | None = Field(
        None, description="bearer token every /v1 request must carry (default: the systemd "
        "credential http_token); on a cloud node, the token its edges send"
    )
    metrics_auth: bool = Field(False, description="/metrics needs the token (or client cert) too")
    tls: HttpTlsSettings = HttpTlsSettings()
    allow_unauthenticated: bool = Field(
        False, description="serve a non-loopback http.host without any authentication"
    )
    recent_tasks_bytes: int = Field(
        8 << 20, ge=0, le=1 << 30, description="memory for the finished tasks GET "
        "/v1/tasks/{id} can show (oldest dropped first; 0 = off)"
    )

    _token: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_token_and_protect(self) -> HttpSettings:
        path = self.token_file or _implicit_credential("http_token")
        if path is not None:
            token = _read_secret(path, os.environ.get("CREDENTIALS_DIRECTORY"))
            text = token.get_secret_value()
            if not text:
                raise ValueError(f"the http token file {path} is empty")
            if not all(33 <= ord(ch) < 127 for ch in text):
                raise ValueError(f"the http token in {path} must be printable ASCII without "
                                 "spaces (one line)")
            self._token = token
        if self.metrics_auth and self._token is None and self.tls.client_ca_file is None:
            raise ValueError("http.metrics_auth needs http.token_file (or "
                             "http.tls.client_ca_file): without one there is nothing to check")
        if (not self.allow_unauthenticated and not is_loopback_host(self.host)
                and self._token is None and self.tls.client_ca_file is None):
            raise ValueError(
                f"http.host {self.host!r} is reachable from other machines but the HTTP API has "
                "no authentication; set http.token_file (a bearer token), or "
                "http.tls.client_ca_file (client certificates), or "
                "http.allow_unauthenticated: true to accept anyone (protected mode)"
            )
        return self

    @property
    def token(self) -> SecretStr | None:
        return self._token

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"


class CloudSettings(_Section):
    url: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = Field(
        None, description="CA that signed an https cloud.url's certificate (default: system CAs)"
    )
    timeout_s: float = Field(30.0, gt=0, le=3600)
    max_connections: int = Field(32, ge=1, le=4096)
    speed: float = Field(
        1.0, gt=0, description="the cloud tier's relative speed: scales exec priors until learned"
    )
    rtt_s: float = Field(
        0.05, gt=0, le=60, description="the uplink's nominal round trip to the cloud tier: the "
        "cloud link estimate starts from it, and a link measured at twice its nominal time is "
        "degraded (probed)"
    )
    bandwidth_bps: float = Field(
        2e7, gt=0, le=1e12, description="the uplink's nominal bandwidth in bits/s (likewise)"
    )
    probe_interval_s: float = Field(
        10.0, ge=0, le=60, description="while the uplink looks degraded and no task taught it "
        "for this long, probe it (a few small requests to the cloud's /v1/probe) so that a "
        "recovery is noticed; the interval grows by half, up to 60 s, while it stays degraded "
        "(0 = never probe)"
    )
    probe_max_bytes: int = Field(
        262144, ge=8192, le=1 << 24, description="the largest payload of one probe request "
        "(it is sized to the uplink as estimated; keep it under the cloud node's "
        "http.max_body_bytes)"
    )

    _token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _ca_readable(cls, value: Path | None) -> Path | None:
        return _credential_file(value)

    @model_validator(mode="after")
    def _load_token(self) -> CloudSettings:
        path = self.token_file or _implicit_credential("cloud_token")
        if path is not None:
            self._token = _read_secret(path, os.environ.get("CREDENTIALS_DIRECTORY"))
        if self._token is not None and self.url and _USERINFO_RE.match(self.url):
            raise ValueError("cloud.url carries user:password (HTTP Basic) and a cloud token is "
                             "set too: use one of them")
        return self

    @property
    def token(self) -> SecretStr | None:
        return self._token


class TelemetrySettings(_Section):
    interval_s: float = Field(1.0, gt=0, le=3600)
    suspect_after_intervals: float = Field(3.0, ge=1)
    offline_after_intervals: float = Field(10.0, ge=1)
    max_payload_bytes: int = Field(65_536, ge=64, le=16 << 20)
    max_devices: int = Field(10_000, ge=1, le=10_000_000)
    device_ttl_s: float = Field(3600.0, gt=0)
    max_neighbours: int = Field(
        256, ge=1, le=65_536, description="neighbour table size: new node ids beyond it are "
        "refused (an offline entry makes room)"
    )
    max_fanout_rate: float = Field(
        0.0, ge=0, description="node telemetry messages/s the broker may deliver for the "
        "whole cluster (0 = off): with N nodes alive each publishes every "
        "max(interval_s, N*N/max_fanout_rate) s and judges liveness on that interval; the "
        "same value on every node (docs/scaling.md)"
    )

    @model_validator(mode="after")
    def _offline_after_suspect(self) -> TelemetrySettings:
        if self.offline_after_intervals < self.suspect_after_intervals:
            raise ValueError("offline_after_intervals must be >= suspect_after_intervals")
        return self


class DeviceMapping(_Section):
    """Maps an existing topic (and optionally a JSON field in it) onto a recognised name."""

    topic: str = Field(min_length=1)
    device_id: str = Field(pattern=NODE_ID_PATTERN)
    name: str = Field(min_length=1, description="e.g. battery, uplink_bps, rtt_s")
    field: str | None = Field(None, description="dotted JSON path; none = payload is a number")
    scale: float = 1.0


class DeviceSettings(_Section):
    mappings: tuple[DeviceMapping, ...] = ()
    uplink_device: str | None = Field(
        None, description="device whose uplink_bps/rtt_s readings measure this node's link "
        "to the cloud (fed into the cloud link estimate)"
    )


class TaskTypeSettings(_Section):
    """One task type: what runs it, where it may go, and the priors for its cost."""

    handler: str = Field(description="builtin:NAME | python:module:function | command")
    command: tuple[str, ...] | None = None
    offload: Literal["local", "neighbours", "anywhere"] = "anywhere"
    enabled: bool = True
    timeout_s: float = Field(60.0, gt=0, le=86_400)
    deadline_s: float | None = Field(None, gt=0, description="default when a task has none")
    cpu_bound: bool = Field(False, description="run in the process pool, off the event loop")
    exec_prior_s: float = Field(0.05, ge=0, description="prior execution time at speed 1")
    exec_prior_s_per_mb: float = Field(0.0, ge=0, description="prior extra time per MB input")
    output_bytes: int = Field(1024, ge=0, description="expected output size")
    idempotent: bool = Field(
        False, description="safe to run again: a task of this type unfinished at a crash is "
        "re-run after the restart (else answered failed, 'interrupted by restart')")
    env: dict[str, str] = Field(
        default_factory=dict, description="a command handler's environment besides PATH, LANG"
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"env name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if name.startswith(ENV_PREFIX) or name in DAEMON_ONLY_ENV:
                raise ValueError(f"env name {name!r} belongs to the daemon, not to a handler")
            if "\x00" in text:
                raise ValueError(f"env value of {name} contains NUL")
        return value

    @model_validator(mode="after")
    def _handler_shape(self) -> TaskTypeSettings:
        kind, _, rest = self.handler.partition(":")
        if kind == "builtin":
            if rest not in BUILTIN_TYPES:
                raise ValueError(f"unknown builtin {rest!r}; one of {', '.join(BUILTIN_TYPES)}")
        elif kind == "python":
            if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", rest):
                raise ValueError("python handler must be 'python:package.module:function'")
        elif kind == "command":
            if not self.command:
                raise ValueError("a command handler needs a non-empty 'command' argv list")
        else:
            raise ValueError("handler must be builtin:NAME, python:module:function or command")
        return self


def builtin_task_types() -> dict[str, dict[str, Any]]:
    """Defaults of the four built-in types (contract §2)."""
    return {
        "echo": {"handler": "builtin:echo", "exec_prior_s": 0.0005, "output_bytes": 256,
                 "idempotent": True},
        # ~1 µs per SHA-256 round (0.8 µs measured on the development VM) plus ~5 ms of
        # process-pool round trip: the prior scales with the rounds asked for (the work, per
        # million), not one figure for every task
        "hash": {"handler": "builtin:hash", "cpu_bound": True, "exec_prior_s": 0.005,
                 "exec_prior_s_per_mb": 1.0, "output_bytes": 100, "timeout_s": 120.0,
                 "idempotent": True},
        "matmul": {"handler": "builtin:matmul", "cpu_bound": True, "exec_prior_s": 0.1,
                   "output_bytes": 64, "timeout_s": 120.0, "idempotent": True},
        "sleep": {"handler": "builtin:sleep", "exec_prior_s": 1.0, "output_bytes": 32,
                  "timeout_s": 90.0, "idempotent": True},
    }


class ExecutorSettings(_Section):
    slots: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=4096)
    queue_size: int = Field(256, ge=0, le=1_000_000)
    process_workers: int | None = Field(
        None, ge=1, le=1024, description="default = min(slots, CPU count)")
    max_input_bytes: int = Field(1 << 20, ge=64, le=256 << 20)
    speed: float = Field(1.0, gt=0, description="relative speed, scales exec priors")


class PolicySettings(_Section):
    """Parameters of the decision policy; converted to core parameters by the runtime.

    Weights are in seconds of latency per unit (see docs/cost-model.md).
    """

    name: str = "cost"
    latency_weight: float = Field(1.0, ge=0)
    energy_weight: float = Field(0.002, ge=0, description="per joule, on mains power")
    battery_energy_weight: float = Field(
        0.05, ge=0, description="per joule on a battery-powered node at or above the knee"
    )
    money_weight: float = Field(0.0, ge=0)
    battery_knee: float = Field(0.5, ge=0, le=1)
    battery_energy_weight_max: float = Field(0.5, ge=0, description="per joule at the floor")
    battery_floor: float = Field(0.1, ge=0, le=1)
    battery_floor_local: bool = Field(False, description="also refuse local work below floor")
    latency_quantile: float = Field(
        0.95, gt=0.5, lt=1, description="the predicted quantile miss probabilities are read from"
    )
    miss_weight: float = Field(
        0.3, ge=0, description="score per second of time left x probability of missing the "
        "deadline (0: only a target whose mean is past the deadline is ruled out)"
    )
    stale_after_s: float = Field(5.0, gt=0)
    suspect_penalty_s: float = Field(0.25, ge=0, description="score penalty, suspect target")
    deadline_best_effort: bool = Field(
        False, description="when no target can meet a deadline, try the least late anyway"
    )
    max_candidates: int = Field(
        4, ge=1, le=1024, description="edge neighbours scored per decision, the best by a "
        "cheap pre-score (reported wait + measured RTT + the task's execution time there); "
        "bounds decision cost in big clusters"
    )

    @field_validator("name")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICY_NAMES:
            raise ValueError(f"unknown policy {value!r}; one of {', '.join(POLICY_NAMES)}")
        return value

    def to_params(self) -> CostParams:
        """The plain core parameter object the policies use (the same keys, less `name`)."""
        return CostParams(**self.model_dump(exclude={"name"}))


class PowerSettings(_Section):
    """This node's power model (watts)."""

    idle_w: float = Field(4.0, ge=0)
    busy_w: float = Field(8.0, ge=0)
    tx_w: float = Field(1.5, ge=0)
    rx_w: float = Field(1.0, ge=0)
    battery_device: str | None = Field(
        None, description="device id whose 'battery' reading is this node's own battery"
    )


class OffloadSettings(_Section):
    """Node-to-node and cloud dispatch."""

    max_attempts: int = Field(3, ge=1, le=16)
    timeout_margin_s: float = Field(0.5, ge=0, description="added to the predicted latency")
    min_timeout_s: float = Field(1.0, gt=0)

    def to_params(self) -> FallbackParams:
        """The plain core parameters of the fallback chain."""
        return FallbackParams(
            max_attempts=self.max_attempts,
            timeout_margin_s=self.timeout_margin_s,
            min_timeout_s=self.min_timeout_s,
        )


class SpoolSettings(_Section):
    """The durable spool in `state_dir/spool.sqlite` (docs/reliability.md); off without
    state_dir."""

    max_bytes: int = Field(64 << 20, ge=64 << 10, le=64 << 30,
                           description="payload bytes it holds; past it tasks run unspooled")
    reply_ttl_s: float = Field(3600.0, gt=0, le=30 * 86_400,
                               description="a reply the broker never took is given up after")


class RecordSettings(_Section):
    """Recording of finished tasks and telemetry for `edgesched replay` (docs/replay.md);
    off while `path` is unset."""

    path: Path | None = Field(None, description="directory of the gzip'd JSON-lines records")
    max_bytes: int = Field(256 << 20, ge=1 << 20, le=1 << 40,
                           description="total size of the record files; the oldest go first")
    file_bytes: int = Field(16 << 20, ge=64 << 10, le=1 << 32,
                            description="a record file is closed and a new one started past it")
    buffer_bytes: int = Field(4 << 20, ge=64 << 10, le=1 << 30,
                              description="lines waiting for the writer; past it they are "
                                          "dropped (edgesched_record_dropped_total)")
    explore: float = Field(0.0, ge=0.0, le=0.5,
                           description="ε: share of decisions drawn among feasible targets")
    telemetry_every_s: float = Field(1.0, gt=0, le=3600,
                                     description="how often the view and links are recorded")


class ShutdownSettings(_Section):
    """The graceful drain on SIGTERM (docs/running.md, "Stopping")."""

    grace_s: float = Field(
        8.0, gt=0, le=300,
        description="running tasks may finish this long; the process exits within grace_s + 2 s")


class WatchdogSettings(_Section):
    stall_limit_s: float = Field(30.0, gt=0, description="exit non-zero past this loop stall")


class LogSettings(_Section):
    """Logs on stderr (docs/running.md, "Logs"); both reload on SIGHUP."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the least severe level logged (--log-level overrides it)")
    format: Literal["text", "json"] = Field(
        "text", description="text: ISO 8601 UTC timestamps, or journald <N> priorities under "
        "systemd; json: one object per line with node_id and task_id")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


_YAML_DATA: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("yaml_data")


class _YamlSource(PydanticBaseSettingsSource):
    """Feeds the already-parsed YAML document in below the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _YAML_DATA.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_DATA.get({}))


class Settings(BaseSettings):
    """The whole configuration of one node."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    node_id: str = Field(default_factory=default_node_id)
    role: Literal["edge", "cloud"] = "edge"
    state_dir: Path | None = Field(None, description="where the incarnation counter is kept")
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    security: SecuritySettings = SecuritySettings()
    intake: IntakeSettings = IntakeSettings()
    cloud: CloudSettings = CloudSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    devices: DeviceSettings = DeviceSettings()
    task_types: dict[str, TaskTypeSettings] = Field(
        default_factory=lambda: {k: TaskTypeSettings(**v) for k, v in builtin_task_types().items()}
    )
    executor: ExecutorSettings = ExecutorSettings()
    policy: PolicySettings = PolicySettings()
    power: PowerSettings = PowerSettings()
    offload: OffloadSettings = OffloadSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    spool: SpoolSettings = SpoolSettings()
    record: RecordSettings = RecordSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @field_validator("node_id")
    @classmethod
    def _valid_node_id(cls, value: str) -> str:
        if not _NODE_ID_RE.match(value):
            raise ValueError("must match [A-Za-z0-9_-]{1,64}")
        return value

    @field_validator("task_types", mode="before")
    @classmethod
    def _merge_builtins(cls, value: Any) -> Any:
        """Built-ins are always there; a file entry for one overrides only the keys it names."""
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            return value
        merged: dict[str, Any] = {}
        for name, defaults in builtin_task_types().items():
            override = value.get(name, {})
            merged[name] = {**defaults, **override} if isinstance(override, Mapping) else override
        for name, spec in value.items():
            if name not in merged:
                merged[name] = spec
        return merged

    @field_validator("task_types")
    @classmethod
    def _type_names(cls, value: dict[str, TaskTypeSettings]) -> dict[str, TaskTypeSettings]:
        for name in value:
            if not _NODE_ID_RE.match(name):
                raise ValueError(f"task type name {name!r} must match [A-Za-z0-9_-]{{1,64}}")
        return value

    def enabled_task_types(self) -> dict[str, TaskTypeSettings]:
        return {name: spec for name, spec in self.task_types.items() if spec.enabled}


@dataclass(frozen=True, kw_only=True)
class ProcessEnvironment:
    """What the service manager tells the process through its environment."""

    notify_socket: str | None
    watchdog_usec: int | None
    watchdog_pid: int | None
    credentials_directory: str | None
    invocation_id: str | None


def read_process_environment(environ: Mapping[str, str] | None = None) -> ProcessEnvironment:
    env = os.environ if environ is None else environ

    def _int(name: str) -> int | None:
        try:
            return int(env[name])
        except (KeyError, ValueError):
            return None

    return ProcessEnvironment(
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=_int("WATCHDOG_USEC"),
        watchdog_pid=_int("WATCHDOG_PID"),
        credentials_directory=env.get("CREDENTIALS_DIRECTORY") or None,
        invocation_id=env.get("INVOCATION_ID") or None,
    )


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child edgesched process configured only by its --config file.

    Drops EDGESCHED_* (they would override the file) and the systemd variables that belong to
    this process, not to its children.
    """
    env = os.environ if environ is None else environ
    dropped = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")
    return {
        name: value for name, value in env.items()
        if not name.startswith(ENV_PREFIX) and name not in dropped
    }


def handler_base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole inherited environment of a `command` task handler: PATH and LANG of this
    process (or safe defaults), nothing else; a task type's `env` map is added to it."""
    env = os.environ if environ is None else environ
    return {"PATH": env.get("PATH") or DEFAULT_HANDLER_PATH, "LANG": env.get("LANG") or "C.UTF-8"}


def config_path_from_env(explicit: str | Path | None) -> Path | None:
    """`--config`, else `$EDGESCHED_CONFIG`, else none (built-in defaults)."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"{path}: cannot read config file: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([("", f"{path}: not valid YAML{where}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"{path}: the top level must be a mapping of keys")])
    return data


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        problems.append((key, msg))
    return problems


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings tree: defaults < YAML file < environment < explicit overrides.

    Raises `ConfigError` listing every problem as `(dotted.key, message)`.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    token = _YAML_DATA.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    finally:
        _YAML_DATA.reset(token)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret value masked."""
    data = settings.model_dump(mode="json")
    data["mqtt"]["password"] = MASK if settings.mqtt.password is not None else None
    data["cloud"]["token"] = MASK if settings.cloud.token is not None else None
    data["cloud"]["url"] = mask_url(settings.cloud.url) if settings.cloud.url else None
    data["http"]["token"] = MASK if settings.http.token is not None else None
    return data


def mask_url(url: str) -> str:
    """`url` with the password of its user-info masked: `http://u:********@host/...`.

    A user-info without a colon (often a bare token) is masked whole.
    """
    match = _USERINFO_RE.match(url)
    if match is None:
        return url
    user, sep, _ = match["userinfo"].partition(":")
    shown = f"{user}:{MASK}" if sep else MASK
    return f"{match['scheme']}{shown}@{url[match.end():]}"
