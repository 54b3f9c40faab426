"""The positional fast constructors build ordinary, frozen, equal instances (or fall back)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from edgesched.core.candidates import _candidate
from edgesched.core.fastinit import fast_constructor
from edgesched.core.model import (
    CANDIDATE_FIELDS,
    Candidate,
    ExecEstimate,
    LinkEstimate,
    Liveness,
    Placement,
    PowerModel,
)

LINK_FIELDS = tuple(f.name for f in dataclasses.fields(LinkEstimate))


def test_fast_instance_is_an_ordinary_frozen_instance() -> None:
    values = (0.01, 0.002, 2e7, 1e6)
    fast = fast_constructor(LinkEstimate, LINK_FIELDS)(*values)
    regular = LinkEstimate(**dict(zip(LINK_FIELDS, values, strict=True)))
    assert type(fast) is LinkEstimate
    assert fast == regular and hash(fast) == hash(regular) and repr(fast) == repr(regular)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.rtt_s = 0.0  # type: ignore[misc]


def test_mismatched_field_list_falls_back_to_the_validating_constructor() -> None:
    make = fast_constructor(ExecEstimate, ("std_s", "mean_s"))  # wrong order
    assert make(0.1, 2.0) == ExecEstimate(mean_s=2.0, std_s=0.1)
    with pytest.raises(ValueError, match="mean_s must be finite"):
        make(0.1, math.nan)


def _values(**over: object) -> tuple[object, ...]:
    base = dict(
        node_id="n1", placement=Placement.NEIGHBOUR, liveness=Liveness.ONLINE, age_s=0.5,
        slots=2, running=1, queued=0, est_wait_s=0.1, wait_std_s=0.05, battery=0.7,
        power=PowerModel(), link=LinkEstimate(rtt_s=0.01), exec=ExecEstimate(mean_s=0.2),
        supports_type=True, money_cost=0.0, max_queue=None, origin_power=PowerModel(),
        origin_battery=None, excluded=False,
    )
    base.update(over)
    return tuple(base[name] for name in CANDIDATE_FIELDS)


def test_core_candidate_fast_path_equals_the_public_constructor() -> None:
    values = _values()
    assert _candidate(*values) == Candidate(**dict(zip(CANDIDATE_FIELDS, values, strict=True)))


@pytest.mark.parametrize(
    ("name", "bad"),
    [("est_wait_s", math.nan), ("wait_std_s", math.inf), ("age_s", -1.0), ("running", -1)],
)
def test_core_candidate_fast_path_still_rejects_bad_computed_values(name: str, bad: float) -> None:
    with pytest.raises(ValueError):
        _candidate(*_values(**{name: bad}))


def test_the_models_positional_constructors_match_their_classes() -> None:
    # A field added or reordered in model.py silently falls back to the slow keyword path;
    # this says which constructor's name list needs updating.
    from edgesched.core import model

    makers = {name: getattr(model, name) for name in dir(model) if name.startswith("new_")}
    assert len(makers) == 6
    for name, make in makers.items():
        assert make.__name__.startswith("fast_"), f"{name} lists the wrong fields"
