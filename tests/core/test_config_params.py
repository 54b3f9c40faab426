"""The config's policy/offload sections convert to the core's parameters, defaults in sync."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgesched.config import OffloadSettings, PolicySettings, load_settings
from edgesched.core.costmodel import CostParams
from edgesched.core.fallback import FallbackParams
from edgesched.errors import ConfigError


def test_defaults_match_the_core_defaults() -> None:
    assert PolicySettings().to_params() == CostParams()
    assert OffloadSettings().to_params() == FallbackParams()
    # Every CostParams knob is configurable (z is derived).
    knobs = {f.name for f in dataclasses.fields(CostParams) if f.init}
    assert knobs <= set(PolicySettings.model_fields)


def test_values_carry_over() -> None:
    params = PolicySettings(energy_weight=0.01, latency_quantile=0.9,
                            deadline_best_effort=True).to_params()
    assert (params.energy_weight, params.latency_quantile, params.deadline_best_effort) == (
        0.01, 0.9, True)
    assert OffloadSettings(max_attempts=5).to_params().max_attempts == 5


def test_unknown_policy_name_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("policy: {name: fastest}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert [key for key, _ in err.value.problems] == ["policy.name"]
    assert "valid" in err.value.lines()[0] or "one of" in err.value.lines()[0]
