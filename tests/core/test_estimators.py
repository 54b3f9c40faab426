"""Online estimators: convergence on noisy streams, outliers, staleness, bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesched.core.estimators import (
    EstimatorBank,
    ExecPrior,
    ExecTimeEstimator,
    LinkEstimator,
    RobustEwma,
)
from edgesched.core.model import LinkEstimate

PRIOR = LinkEstimate(rtt_s=0.5, rtt_std_s=0.1, bandwidth_bps=1e6)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.001, 1.0), st.floats(0.0, 0.3), st.integers(0, 2**32 - 1))
def test_rtt_converges_to_the_true_mean(true_rtt: float, cv: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    est = LinkEstimator(PRIOR)
    for i, x in enumerate(rng.normal(true_rtt, cv * true_rtt, 400).clip(0.0)):
        est.observe_rtt(float(x), float(i))
    snap = est.snapshot(400.0)
    # An EWMA with alpha 1/8 keeps a relative spread of cv·sqrt(1/15) ~ 0.26·cv: allow 4 of it.
    assert snap.rtt_s == pytest.approx(true_rtt, rel=0.05 + 1.1 * cv, abs=1e-4)
    assert snap.rtt_std_s <= 3 * cv * true_rtt + 0.01 * true_rtt + 1e-3


@settings(max_examples=40, deadline=None)
@given(st.floats(1e5, 1e9), st.floats(0.0, 0.3), st.integers(0, 2**32 - 1))
def test_bandwidth_converges(true_bps: float, cv: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    est = LinkEstimator(PRIOR)
    for i in range(300):
        nbytes = float(rng.uniform(1e4, 1e6))
        seconds = 8 * nbytes / true_bps * max(0.05, 1 + cv * rng.standard_normal())
        est.observe_transfer(nbytes, seconds, float(i))
    # The time per bit is what gets averaged, so transfer-time predictions are unbiased; with
    # alpha 1/4 the estimate's own spread is cv·sqrt(1/7) ~ 0.38·cv: allow 4 of it.
    spb = 1 / est.snapshot(300.0).bandwidth_bps
    assert spb == pytest.approx(1 / true_bps, rel=0.05 + 1.6 * cv)


# Statistical: a random noise seed can land outside any fixed tolerance (seed 9651652 with
# a=0.125, b=1, cv=0.25 misses 0.5 MB by 24%), so the examples are the same on every run.
@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.floats(0.01, 2.0), st.floats(0.0, 1.0), st.floats(0.0, 0.3),
       st.integers(0, 2**32 - 1))
def test_exec_time_converges_to_a_plus_b_size(a: float, b: float, cv: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    est = ExecTimeEstimator(ExecPrior(mean_s=1.0, s_per_mb=0.0))
    for i in range(500):
        size = float(rng.uniform(0, 4e6))
        true = a + b * size / 1e6
        est.observe(size, max(0.0, true * (1 + cv * rng.standard_normal())), float(i))
    for size in (0.5e6, 2e6, 3.5e6):
        true = a + b * size / 1e6
        pred = est.predict(size, 500.0)
        assert pred.mean_s == pytest.approx(true, rel=0.1 + cv / 2, abs=0.02)
    # The spread tracks the noise (not the prior's 50 %).
    assert est.predict(2e6, 500.0).std_s <= 2 * cv * (a + 4 * b) + 0.05


def test_exec_prior_until_measured_then_learned() -> None:
    est = ExecTimeEstimator(ExecPrior(mean_s=0.2, s_per_mb=0.1, cv=0.5))
    first = est.predict(2e6, 0.0)
    assert (first.mean_s, first.std_s) == pytest.approx((0.4, 0.2))
    for i in range(100):
        est.observe(1e6, 1.0, float(i))
    assert est.predict(1e6, 100.0).mean_s == pytest.approx(1.0, rel=0.02)


def test_same_size_stream_does_not_wind_up() -> None:
    est = ExecTimeEstimator(ExecPrior(mean_s=0.2))
    for i in range(5000):
        est.observe(1e6, 0.5, float(i))
    assert max(est.p11, est.p22) <= 1.0 + 1e-12
    assert est.predict(1e6, 5000.0).mean_s == pytest.approx(0.5, rel=1e-3)
    assert math.isfinite(est.predict(10e6, 5000.0).mean_s)


def test_one_outlier_barely_moves_the_estimates() -> None:
    link = LinkEstimator(PRIOR)
    ex = ExecTimeEstimator(ExecPrior(mean_s=0.1))
    for i in range(50):
        link.observe_rtt(0.010 + 0.001 * (i % 3), float(i))
        ex.observe(1e5, 0.10 + 0.01 * (i % 3), float(i))
    link.observe_rtt(5.0, 50.0)
    ex.observe(1e5, 30.0, 50.0)
    assert link.snapshot(50.0).rtt_s < 0.015
    assert ex.predict(1e5, 50.0).mean_s < 0.2


def test_a_level_shift_is_learned() -> None:
    ewma = RobustEwma()
    for _ in range(50):
        ewma.update(0.01)
    for _ in range(60):
        ewma.update(0.4)
    assert ewma.mean == pytest.approx(0.4, rel=0.05)


def test_staleness_decays_back_to_the_prior() -> None:
    link = LinkEstimator(PRIOR)
    for i in range(50):
        link.observe_rtt(0.01, float(i))
    assert link.snapshot(50.0).rtt_s == pytest.approx(0.01, rel=0.05)
    old = link.snapshot(50.0 + 10 * link.params.decay_s)
    assert old.rtt_s == pytest.approx(PRIOR.rtt_s, rel=0.01)
    mid = link.snapshot(50.0 + link.params.decay_s)
    assert 0.01 < mid.rtt_s < PRIOR.rtt_s
    assert mid.rtt_std_s > link.snapshot(50.0).rtt_std_s  # less sure as it ages


def test_staleness_is_flat_for_the_first_thousandth_of_decay() -> None:
    """Right after an observation the learned values are used as they are (the weight is
    above 1 - 1e-6 up to decay/1000); past that the blend towards the prior starts."""
    link = LinkEstimator(PRIOR)
    link.observe_rtt(0.01, 50.0)
    decay = link.params.decay_s
    fresh = link.snapshot(50.0)
    assert link.snapshot(50.0 + 0.9e-3 * decay) == fresh
    later = link.snapshot(50.0 + 2e-3 * decay)
    assert later.rtt_s != fresh.rtt_s
    assert later.rtt_s == pytest.approx(fresh.rtt_s, rel=1e-3)  # barely moved yet
    est = ExecTimeEstimator(ExecPrior(mean_s=0.2, cv=0.5))
    est.observe(1e5, 0.05, 10.0)
    exec_decay = est.params.decay_s
    assert est.predict(1e5, 10.0 + 0.9e-3 * exec_decay) == est.predict(1e5, 10.0)
    assert est.predict(1e5, 10.0 + 2e-3 * exec_decay) != est.predict(1e5, 10.0)


def test_invalid_observations_are_ignored_and_counted() -> None:
    bank = EstimatorBank()
    assert not bank.observe_rtt("gw-2", math.nan, 0.0)
    assert not bank.observe_rtt("gw-2", -1.0, 0.0)
    assert not bank.observe_exec("t", "gw-2", 1e3, math.inf, 0.0)
    assert not bank.observe_transfer("gw-2", 1e6, 0.0, 0.0)
    assert bank.rejected == 4
    assert not bank.observe_transfer("gw-2", 100.0, 0.001, 0.0)  # too small to measure bw
    assert bank.rejected == 4
    assert bank.link("gw-2", 0.0) == bank.default_link_prior


def test_bank_priors_scale_with_speed() -> None:
    bank = EstimatorBank(exec_priors={"detect": ExecPrior(mean_s=0.2, s_per_mb=0.1)},
                         speeds={"cloud": 8.0})
    assert bank.exec_estimate("detect", "cloud", 2e6, 0.0).mean_s == pytest.approx(0.05)
    assert bank.exec_estimate("detect", "gw-1", 2e6, 0.0).mean_s == pytest.approx(0.4)
    assert bank.exec_estimate("other", "gw-1", 0.0, 0.0).mean_s == pytest.approx(0.05)
    bank.set_link_prior("cloud", PRIOR)
    assert bank.link("cloud", 0.0) == PRIOR
    with pytest.raises(ValueError):
        bank.set_speed("x", 0.0)


def test_bank_is_bounded_lru() -> None:
    bank = EstimatorBank(max_keys=8)
    for i in range(100):
        bank.observe_exec("t", f"n{i}", 1e3, 0.1, float(i))
        bank.observe_rtt(f"n{i}", 0.01, float(i))
    assert len(bank) == 16
    assert bank.evictions == 2 * 92
    bank.observe_exec("t", "n92", 1e3, 0.1, 100.0)  # touch the oldest, then add one more
    bank.observe_exec("t", "new", 1e3, 0.1, 100.0)
    assert bank.exec_estimate("t", "n92", 1e3, 100.0).mean_s == pytest.approx(0.1, rel=0.5)
    assert ("t", "n93") not in bank._exec


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite), max_size=30), finite, finite)
def test_no_observation_stream_breaks_an_estimator(stream, size, now) -> None:
    """Whatever finite numbers arrive, the answers stay finite and valid (never raise)."""
    bank = EstimatorBank()
    for a, b, t in stream:
        bank.observe_exec("t", "n", a, b, t)
        bank.observe_rtt("n", b, t)
        bank.observe_transfer("n", a, b, t)
    est = bank.exec_estimate("t", "n", size, now)
    link = bank.link("n", now)
    assert math.isfinite(est.mean_s) and math.isfinite(est.std_s)
    assert math.isfinite(link.rtt_s) and link.bandwidth_bps > 0


def test_exchanges_split_into_rtt_and_bandwidth() -> None:
    """Whole round trips of mixed sizes over a 20 ms, 10 Mbit/s link teach both figures."""
    bank = EstimatorBank(default_link_prior=LinkEstimate(rtt_s=0.1, bandwidth_bps=1e6))
    rng = np.random.default_rng(3)
    for i in range(600):
        nbytes = float(rng.choice([200.0, 500.0, 2e5, 1e6]))
        seconds = 0.02 + 8 * nbytes / 1e7
        assert bank.observe_exchange("gw-2", nbytes, seconds, float(i)) or nbytes >= 4096
    link = bank.link("gw-2", 600.0)
    assert link.rtt_s == pytest.approx(0.02, rel=0.1)
    assert link.bandwidth_bps == pytest.approx(1e7, rel=0.1)
    assert not bank.observe_exchange("gw-2", math.nan, 1.0, 0.0)


@pytest.mark.parametrize(("before", "after"), [(0.05, 0.4), (0.4, 0.05)])
def test_link_follows_a_level_shift_within_a_few_readings(before: float, after: float) -> None:
    """An LTE uplink degrading (or recovering): monitor readings only every few seconds, so
    the estimate must move to the new level within a handful of them, not dozens."""
    link = LinkEstimator(LinkEstimate(rtt_s=before, bandwidth_bps=2e7))
    rng = np.random.default_rng(5)
    t = 0.0
    for _ in range(40):
        t += 5.0
        link.observe_rtt(before * (1 + 0.05 * rng.standard_normal()), t)
    for _ in range(5):
        t += 5.0
        link.observe_rtt(after * (1 + 0.05 * rng.standard_normal()), t)
    assert link.snapshot(t).rtt_s == pytest.approx(after, rel=0.15)


def test_exec_time_follows_a_level_shift() -> None:
    est = ExecTimeEstimator(ExecPrior(mean_s=0.1))
    rng = np.random.default_rng(6)
    for i in range(200):
        est.observe(1e5, 0.1 * (1 + 0.1 * rng.standard_normal()), float(i))
    for i in range(200, 206):  # the node got 4x slower (throttled, or contended)
        est.observe(1e5, 0.4 * (1 + 0.1 * rng.standard_normal()), float(i))
    assert est.predict(1e5, 206.0).mean_s == pytest.approx(0.4, rel=0.15)
