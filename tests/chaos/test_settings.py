"""The two settings of issue #15's drain and sessions: bounds, defaults, and what reaches the
MQTT connection (the behaviour itself is tested with real processes beside this file)."""

from __future__ import annotations

import pytest

from edgesched.config import load_settings
from edgesched.errors import ConfigError
from edgesched.node.service import mqtt_options


def test_defaults() -> None:
    s = load_settings(None, node_id="gw-7")
    assert s.shutdown.grace_s == 8.0
    opts = mqtt_options(s)
    assert opts.session_expiry_s == 3600
    assert opts.client_id == "edgesched-gw-7"  # stable across restarts: the session's key


@pytest.mark.parametrize("grace", [0, -1, 300.5])
def test_grace_out_of_bounds_is_a_config_error(grace: float) -> None:
    with pytest.raises(ConfigError, match="shutdown"):
        load_settings(None, shutdown={"grace_s": grace})


def test_session_expiry_zero_and_bounds() -> None:
    assert mqtt_options(load_settings(None, mqtt={"session_expiry_s": 0})).session_expiry_s == 0
    with pytest.raises(ConfigError, match="session_expiry_s"):
        load_settings(None, mqtt={"session_expiry_s": -1})
