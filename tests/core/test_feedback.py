"""What a node learns from its attempts (core/feedback.py) and its FIFO wait (core/queueing.py):
the daemon and the simulator both call these."""

from __future__ import annotations

import pytest

from edgesched.core.estimators import EstimatorBank, ExecPrior
from edgesched.core.feedback import InFlight, learn_from_reply
from edgesched.core.queueing import fifo_wait, remaining_s
from tests.core.builders import task


@pytest.mark.parametrize(
    ("slots", "left", "queued", "wait"),
    [
        (2, [], [], 0.0),  # idle
        (2, [0.3], [], 0.0),  # a slot free
        (2, [0.3, 0.1], [], 0.1),  # the first slot to free
        (2, [0.3, 0.1], [0.5], 0.3),  # the queued task takes the 0.1 slot, we get the 0.3 one
        (1, [0.2], [0.5, 0.4], pytest.approx(1.1)),  # one slot: all of it, in order
        (1, [-0.5], [], 0.0),  # overdue: about to finish
        (2, [], [0.2, 0.2, 0.2], pytest.approx(0.2)),  # queued behind free slots
    ],
)
def test_fifo_wait(slots: int, left: list[float], queued: list[float], wait: object) -> None:
    assert fifo_wait(slots, left, queued) == wait


def test_remaining_time_of_a_running_task() -> None:
    """No spread: what is left of the expected time (negative = overdue). A spread: the mean
    residual life of a lognormal run time, which grows past the mean when the tail is heavy."""
    assert remaining_s(1.0, 0.0, 0.4) == pytest.approx(0.6)
    assert remaining_s(1.0, 0.0, 1.5) == pytest.approx(-0.5)
    assert remaining_s(1.0, 2.0, 0.0) == 1.0  # not started: the whole expected time
    assert remaining_s(1.0, 0.05, 0.5) == pytest.approx(0.5, abs=0.01)  # tight: as before
    assert 0.0 < remaining_s(1.0, 0.2, 1.5) < 0.2  # past its mean, tight spread: nearly done
    heavy = [remaining_s(1.0, 2.0, t) for t in (0.5, 1.0, 2.0, 5.0)]  # cv 2
    assert heavy == sorted(heavy) and heavy[1] == pytest.approx(1.80, abs=0.01)
    assert heavy[2] == pytest.approx(2.50, abs=0.01)  # twice its mean: 2.5 means left
    # a monte-carlo check of the formula (cv 1, elapsed 1.5x the mean)
    import numpy as np

    sigma2 = np.log1p(1.0)
    x = np.random.default_rng(1).lognormal(-0.5 * sigma2, np.sqrt(sigma2), 2_000_000)
    left = x[x > 1.5] - 1.5
    assert remaining_s(1.0, 1.0, 1.5) == pytest.approx(float(left.mean()), rel=0.02)
    assert remaining_s(1.0, 1.0, 1e12) >= 0.0  # far out in the tail: bounded, not NaN


def bank() -> EstimatorBank:
    return EstimatorBank(exec_priors={"detect": ExecPrior(mean_s=0.2)})


def test_a_local_reply_teaches_the_execution_time_without_the_queueing() -> None:
    b = bank()
    for i in range(20):
        learn_from_reply(b, task(), "gw-1", local=True, round_trip_s=0.9, wait_s=0.4,
                         exec_s=0.3, nbytes=0.0, now=float(i))
    assert b.exec_estimate("detect", "gw-1", 200_000.0, 20.0).mean_s == pytest.approx(0.5,
                                                                                     rel=0.05)
    assert b.link("gw-1", 20.0) == b.default_link_prior  # nothing crossed a link


def test_a_remote_reply_teaches_exec_and_the_network_time() -> None:
    b = bank()
    for i in range(20):  # 0.05 s of network time for a small exchange: an RTT sample
        learn_from_reply(b, task(), "gw-2", local=False, round_trip_s=0.45, wait_s=0.1,
                         exec_s=0.3, nbytes=1000.0, now=float(i))
    assert b.exec_estimate("detect", "gw-2", 200_000.0, 20.0).mean_s == pytest.approx(0.3,
                                                                                     rel=0.05)
    assert b.link("gw-2", 20.0).rtt_s == pytest.approx(0.05, rel=0.1)


def test_an_exactly_known_execution_time_is_not_learned() -> None:
    b = bank()
    learn_from_reply(b, task(exact_s=1.0), "gw-2", local=False, round_trip_s=1.05, wait_s=0.0,
                     exec_s=1.0, nbytes=100.0, now=1.0)
    assert b.exec_estimate("detect", "gw-2", 200_000.0, 1.0).mean_s == pytest.approx(0.2)


def test_in_flight_attempts_count_until_the_targets_report_can_show_them() -> None:
    inflight = InFlight()
    early = inflight.sent("b", 1.0)
    inflight.sent("b", 3.0)
    inflight.sent("cloud", 1.0)
    assert inflight.unreported({}) == {"b": 2, "cloud": 1}
    assert inflight.unreported({"b": 2.0}) == {"b": 1, "cloud": 1}  # b's report shows one
    inflight.settled("b", early)
    assert inflight.unreported({"b": 0.0}) == {"b": 1, "cloud": 1}
    inflight.settled("b", 999)  # unknown token: ignored
    assert inflight.unreported({"b": 5.0}) == {"cloud": 1}


def test_timeouts_in_a_row_hold_their_lateness_against_the_target() -> None:
    """A timed-out attempt's lateness outlives it (`gave_up`) from the second in a row: the
    next tasks see the target as that late, for a hold that doubles with each further one."""
    inflight = InFlight(strikes=2, hold_s=1.0, max_hold_s=4.0)
    first = inflight.sent("cloud", 10.0, expect_s=0.2)
    inflight.gave_up("cloud", first, 10.8)
    assert inflight.lateness(10.8) == {}  # one timeout: often one long task, not evidence
    second = inflight.sent("cloud", 11.0, expect_s=0.2)
    inflight.gave_up("cloud", second, 11.8)
    assert inflight.lateness(11.9) == {"cloud": pytest.approx(0.6)}
    assert inflight.unreported({}) == {}  # settled: it counts as lateness, not as load
    assert inflight.lateness(12.8) == {}  # the hold (1 s) ran out: the cloud is tried again
    third = inflight.sent("cloud", 13.0, expect_s=0.2)
    inflight.gave_up("cloud", third, 14.0)
    assert inflight.lateness(15.9) == {"cloud": pytest.approx(0.8)}  # held 2 s this time
    assert inflight.lateness(16.0) == {}
    for i in range(4):  # the hold doubles up to max_hold_s
        token = inflight.sent("cloud", 20.0 + i, expect_s=0.2)
        inflight.gave_up("cloud", token, 20.5 + i)
    assert inflight.lateness(27.4) == {"cloud": pytest.approx(0.3)}
    assert inflight.lateness(27.5) == {}


def test_an_attempt_answered_in_time_clears_the_timeout_evidence() -> None:
    inflight = InFlight(strikes=2)
    for at in (1.0, 2.0):
        inflight.gave_up("b", inflight.sent("b", at, expect_s=0.1), at + 0.5)
    assert "b" in inflight.lateness(2.6)
    late_reply = inflight.sent("b", 2.6, expect_s=0.1)
    inflight.settled("b", late_reply, 2.9)  # answered, but later than expected: not cleared
    assert "b" in inflight.lateness(2.9)
    answered = inflight.sent("b", 2.9, expect_s=0.1)
    inflight.settled("b", answered, 2.95)
    assert inflight.lateness(2.95) == {}
    # and the count starts over: the next timeout is a first strike again
    inflight.gave_up("b", inflight.sent("b", 3.0, expect_s=0.1), 3.5)
    assert inflight.lateness(3.5) == {}


def test_timeout_evidence_is_bounded_and_checked() -> None:
    inflight = InFlight(strikes=1, max_targets=3)
    for i in range(10):
        inflight.gave_up(f"n{i}", inflight.sent(f"n{i}", 0.0, expect_s=0.1), 1.0)
    assert sorted(inflight.lateness(1.0)) == ["n7", "n8", "n9"]  # the oldest were dropped
    inflight.gave_up("x", inflight.sent("x", 0.0), 5.0)  # no expectation: never late
    inflight.gave_up("y", 12345, 5.0)  # unknown token: ignored
    assert sorted(inflight.lateness(1.0)) == ["n7", "n8", "n9"]
    for bad in ({"strikes": 0}, {"hold_s": 0.0}, {"hold_s": 5.0, "max_hold_s": 1.0},
                {"max_targets": 0}):
        with pytest.raises(ValueError):
            InFlight(**bad)  # type: ignore[arg-type]
