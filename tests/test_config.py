"""Configuration: precedence, validation errors, secrets, and the check-config command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgesched.config import DEFAULT_HTTP_PORT, MASK, load_settings, masked_dump
from edgesched.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESCHED_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgesched", *args],
        capture_output=True, text=True, timeout=60, env=full_env, cwd=REPO,
    )


def test_defaults_without_file() -> None:
    s = load_settings(None)
    assert s.role == "edge"
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.protocol) == ("127.0.0.1", 1883, "5")
    assert s.http.port == DEFAULT_HTTP_PORT
    assert s.cloud.url is None
    assert s.telemetry.interval_s == 1.0
    assert set(s.task_types) == {"echo", "hash", "matmul", "sleep"}
    assert all(t.offload == "anywhere" for t in s.task_types.values())


def test_empty_file_is_valid(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).mqtt.topic_prefix == "edgesched"


def test_precedence_defaults_file_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "node_id: from-file\nmqtt:\n  port: 1900\n  host: broker\n")
    s = load_settings(path)
    assert (s.node_id, s.mqtt.port, s.mqtt.host) == ("from-file", 1900, "broker")
    monkeypatch.setenv("EDGESCHED_MQTT__PORT", "1884")
    monkeypatch.setenv("EDGESCHED_NODE_ID", "gw-2")
    s = load_settings(path)
    # env wins over the file, and a nested env key keeps the file's sibling keys
    assert (s.node_id, s.mqtt.port, s.mqtt.host) == ("gw-2", 1884, "broker")


def test_builtin_task_type_partial_override(tmp_path: Path) -> None:
    path = write(tmp_path, "task_types:\n  hash: {offload: local}\n  sleep: {enabled: false}\n"
                 "  thumb: {handler: 'command', command: ['cat']}\n")
    s = load_settings(path)
    assert s.task_types["hash"].offload == "local"
    assert s.task_types["hash"].handler == "builtin:hash"  # untouched keys keep defaults
    assert "sleep" not in s.enabled_task_types()
    assert s.task_types["thumb"].command == ("cat",)


def test_every_problem_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id: 'bad id!'\nbogus: 1\nmqtt:\n  port: 70000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    keys = {key for key, _ in info.value.problems}
    assert keys == {"node_id", "bogus", "mqtt.port"}
    assert "bogus: unknown key" in info.value.lines()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("role: fog\n", "role"),
        ("mqtt: {protocol: '4'}\n", "mqtt.protocol"),
        ("telemetry: {interval_s: 0}\n", "telemetry.interval_s"),
        ("cloud: {url: 'ftp://x'}\n", "cloud.url"),
        ("task_types: {x: {handler: 'python:notvalid'}}\n", "task_types.x"),
        ("task_types: {x: {handler: command}}\n", "task_types.x"),
        ("mqtt: {topic_prefix: 'a/#'}\n", "mqtt.topic_prefix"),
        ("executor: {slots: 0}\n", "executor.slots"),
    ],
)
def test_validation_errors_use_dotted_keys(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert key in {k for k, _ in info.value.problems}


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "a: [\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path, "- 1\n"))


def test_secret_read_from_file_and_masked(tmp_path: Path) -> None:
    secret = write(tmp_path, "hunter2\n", "pw")
    s = load_settings(write(tmp_path, f"mqtt:\n  username: u\n  password_file: {secret}\n"))
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "hunter2"
    dumped = masked_dump(s)
    assert dumped["mqtt"]["password"] == MASK
    assert "hunter2" not in repr(s) and "hunter2" not in str(dumped)


def test_secret_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("implicit")
    (creds / "token").write_text("tok")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(write(tmp_path, "cloud: {url: 'http://c:1', token_file: token}\n"))
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "implicit"
    assert s.cloud.token is not None and s.cloud.token.get_secret_value() == "tok"


def test_unreadable_secret_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "mqtt: {password_file: /nonexistent/pw}\n"))
    assert info.value.problems[0][0] == "mqtt"


def test_check_config_cli_example_file() -> None:
    proc = run_cli("check-config", "--config", "configs/edge.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "node_id: gw-1" in proc.stdout


def test_check_config_cli_env_override_and_masking(tmp_path: Path) -> None:
    secret = write(tmp_path, "s3cret", "pw")
    cfg = write(tmp_path, f"mqtt: {{password_file: {secret}}}\n")
    proc = run_cli("check-config", "--config", str(cfg), env={"EDGESCHED_MQTT__PORT": "1884"})
    assert proc.returncode == 0, proc.stderr
    assert "port: 1884" in proc.stdout
    assert f"password: '{MASK}'" in proc.stdout
    assert "s3cret" not in proc.stdout + proc.stderr


def test_check_config_cli_errors_exit_78(tmp_path: Path) -> None:
    cfg = write(tmp_path, "node_id: 'bad id!'\nbogus: 1\nmqtt:\n  port: 70000\n")
    proc = run_cli("check-config", "--config", str(cfg))
    assert proc.returncode == 78
    lines = proc.stderr.strip().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["bogus", "mqtt.port", "node_id"]
    assert "Traceback" not in proc.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path, "node_id: via-env-file\n")
    proc = run_cli("check-config", env={"EDGESCHED_CONFIG": str(cfg)})
    assert proc.returncode == 0 and "node_id: via-env-file" in proc.stdout


def test_cli_usage_and_version() -> None:
    assert run_cli("version").stdout.startswith("edgesched ")
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("simulate").returncode == 2  # missing SCENARIO


def _model_keys(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    keys = set()
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        keys.add(prefix + name)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _model_keys(ann, f"{prefix}{name}.")
    return keys


def _yaml_keys(doc: dict[str, object], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in doc.items():
        keys.add(prefix + name)
        if isinstance(value, dict) and name != "task_types":
            keys |= _yaml_keys(value, f"{prefix}{name}.")
    return keys


def test_edge_example_shows_every_key() -> None:
    import yaml

    from edgesched.config import Settings

    example = yaml.safe_load((REPO / "configs" / "edge.yaml").read_text())
    assert _model_keys(Settings) - _yaml_keys(example) == set()


def test_mqtt_tls_defaults_off_and_files_resolve_in_credentials_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(None)
    assert (s.mqtt.tls.ca_file, s.mqtt.tls.cert_file, s.mqtt.tls.key_file) == (None, None, None)
    assert s.mqtt.tls.check_hostname is True and not s.mqtt.tls.enabled
    from edgesched.pki import DevPkiPlan, make_dev_pki

    pki = tmp_path / "pki"
    make_dev_pki(DevPkiPlan(directory=pki, nodes=("gw-1",)))
    creds = tmp_path / "creds"
    creds.mkdir()
    for name, src in (("ca.pem", "ca.pem"), ("node.pem", "nodes/gw-1.pem"),
                      ("node.key", "nodes/gw-1.key")):
        (creds / name).write_bytes((pki / src).read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(write(tmp_path, "mqtt:\n  port: 8883\n  tls: {ca_file: ca.pem, "
                                      "cert_file: node.pem, key_file: node.key}\n"))
    assert s.mqtt.tls.enabled
    assert (s.mqtt.tls.ca_file, s.mqtt.tls.cert_file, s.mqtt.tls.key_file) == (
        creds / "ca.pem", creds / "node.pem", creds / "node.key")


@pytest.mark.parametrize(("tls", "message"), [
    ("{ca_file: CA, cert_file: CA}", "cert_file and key_file go together"),
    ("{ca_file: CA, key_file: CA}", "cert_file and key_file go together"),
    ("{cert_file: CA, key_file: CA}", "needs ca_file"),
    ("{ca_file: /nonexistent/ca.pem}", "cannot read /nonexistent/ca.pem"),
    ("{ca_file: CA, cert_file: CA, key_file: /nonexistent/k}", "cannot read /nonexistent/k"),
    ("{ca_file: CA, check_hostname: maybe}", "valid boolean"),
    ("{ca: CA}", "unknown key"),
])
def test_mqtt_tls_invalid(tmp_path: Path, tls: str, message: str) -> None:
    ca = write(tmp_path, "x", "ca.pem")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f"mqtt:\n  tls: {tls.replace('CA', str(ca))}\n"))
    assert info.value.problems[0][0].startswith("mqtt.tls"), info.value.problems
    assert message in info.value.problems[0][1], info.value.problems


def test_mqtt_tls_files_are_loaded_by_check_config(tmp_path: Path) -> None:
    from edgesched.pki import DevPkiPlan, make_dev_pki

    pki = tmp_path / "pki"
    make_dev_pki(DevPkiPlan(directory=pki, nodes=("gw-1", "gw-2")))
    ca, n1, n2 = pki / "ca.pem", pki / "nodes" / "gw-1", pki / "nodes" / "gw-2"
    ok = load_settings(write(tmp_path, f"mqtt: {{tls: {{ca_file: {ca}, "
                                       f"cert_file: {n1}.pem, key_file: {n1}.key}}}}\n"))
    assert ok.mqtt.tls.cert_file == Path(f"{n1}.pem")
    with pytest.raises(ConfigError, match="not a PEM CA certificate"):
        load_settings(write(tmp_path, f"mqtt: {{tls: {{ca_file: {n1}.key}}}}\n"))
    with pytest.raises(ConfigError, match="not a pair") as info:
        load_settings(write(tmp_path, f"mqtt: {{tls: {{ca_file: {ca}, "
                                      f"cert_file: {n1}.pem, key_file: {n2}.key}}}}\n"))
    assert "PRIVATE KEY" not in str(info.value)  # the error names files, never shows a key
