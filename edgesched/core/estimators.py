"""Online estimators: link RTT/bandwidth and execution time per (task type, node), bounded.

Every estimator is learned from observations (`observe_*`), answers with a mean and a spread,
starts from a caller-supplied prior, resists outliers, and drifts back to its prior when it has
not heard anything for a while (staleness decay). Time is always passed in as `now`.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from edgesched.core.model import (
    ExecEstimate,
    LinkEstimate,
    require_finite,
)

_MDEV_TO_STD = math.sqrt(math.pi / 2.0)  # std of a normal = 1.2533 x its mean absolute deviation
MB = 1_000_000.0
# Physical bounds: an observation outside them is a bug or an attack, not a measurement, and
# accepting it could overflow the arithmetic. Predictions are clamped to them as well.
MAX_SECONDS = 1e6  # ~11 days
MAX_BYTES = 1e12
MIN_S_PER_BIT = 1e-13  # 10 Tbit/s
MAX_S_PER_BIT = 1.0  # 1 bit/s
INF = math.inf
# Below this age/decay ratio the staleness weight exp(-(age/decay)²) is above 1 - 1e-6 and is
# taken as 1: blending would move an estimate by under a millionth of its gap to the prior.
STALENESS_FLAT = 1e-3


def _staleness_weight(age_s: float, decay_s: float) -> float:
    """Weight kept by learned state after `age_s` without observations (1 = fresh).

    exp(-(age/decay)²): flat while observations are merely a little apart (a 1 s gap must not
    pull a well-measured link towards a far-off prior), 0.37 at one `decay_s`, ~0 at three;
    exactly 1 up to STALENESS_FLAT x `decay_s` (see `_fresh_for`).
    """
    if not 0.0 < decay_s < INF or not age_s > decay_s * STALENESS_FLAT:
        return 1.0
    r = age_s / decay_s
    return math.exp(-r * r)


def _fresh_for(decay_s: float) -> float:
    """How long learned state keeps its full weight (`_staleness_weight` is 1 up to then)."""
    return decay_s * STALENESS_FLAT if 0.0 < decay_s < INF else INF


def _blend(w: float, mean: float, std: float, prior_mean: float, prior_std: float) -> tuple[
    float, float
]:
    """Mean and std moved from the learned values towards the prior's by weight 1 - w."""
    m = w * mean + (1.0 - w) * prior_mean
    var = w * std * std + (1.0 - w) * prior_std * prior_std
    return m, math.sqrt(max(0.0, var))


class RobustEwma:
    """SRTT/RTTVAR-style smoothed mean and mean deviation, with clipped outliers.

    An error beyond `outlier_k` deviations is clipped to that bound, so one wild sample moves
    the mean only a little; `shift_after` outliers in a row on the same side are a real level
    shift (a link degrading, a route change): the estimate restarts at the streak's average
    instead of crawling there by alpha-sized steps, each of them clipped again.
    """

    __slots__ = (
        "_streak", "_streak_sum", "alpha", "beta", "mdev", "mean", "n", "outlier_k",
        "shift_after",
    )

    def __init__(
        self, *, alpha: float = 0.125, beta: float = 0.25, outlier_k: float = 4.0,
        shift_after: int = 3,
    ) -> None:
        self.alpha, self.beta = alpha, beta
        self.outlier_k, self.shift_after = outlier_k, shift_after
        self.mean = 0.0
        self.mdev = 0.0
        self.n = 0
        self._streak = 0  # signed count of consecutive outliers
        self._streak_sum = 0.0  # of their values

    def update(self, x: float) -> None:
        if self.n == 0:
            self.mean, self.mdev, self.n = x, x / 2.0, 1
            return
        # max(mdev, 1% of |mean|, 1e-12) and |err|, as comparisons (this runs per observation)
        mean, mdev = self.mean, self.mdev
        err = x - mean
        floor = 0.01 * mean if mean >= 0.0 else -0.01 * mean
        bound = self.outlier_k * (mdev if mdev >= floor and mdev >= 1e-12 else (
            floor if floor >= 1e-12 else 1e-12))
        if err > bound or err < -bound:
            side = 1 if err > 0 else -1
            if self._streak * side > 0:
                self._streak += side
                self._streak_sum += x
            else:
                self._streak, self._streak_sum = side, x
            if abs(self._streak) >= self.shift_after:
                level = self._streak_sum / abs(self._streak)
                # Unsure of the new level's spread yet: start wide, let beta shrink it.
                self.mdev = max(self.mdev, abs(level - self.mean) / 4.0)
                self.mean = level
                self._streak = 0
                self.n += 1
                return
            err = math.copysign(bound, err)
        else:
            self._streak = 0
        self.mdev = mdev + self.beta * ((err if err >= 0.0 else -err) - mdev)
        self.mean = mean + self.alpha * err
        self.n += 1

    def restart(self, level: float) -> None:
        """Start again at `level`: a deliberate measurement (a probe burst,
        `LinkEstimator.observe_probe`) says the old level no longer holds. Its spread is not
        known yet: a quarter of the level, which beta shrinks as samples agree."""
        self.mean, self.mdev = level, level / 4.0
        self._streak, self._streak_sum = 0, 0.0
        self.n += 1

    @property
    def std(self) -> float:
        return self.mdev * _MDEV_TO_STD


PROBE_SHIFT = 2.0  # a probe burst this far off an estimate (either way) restarts it


def _probe_update(ewma: RobustEwma, level: float, samples: Sequence[float]) -> None:
    if ewma.n and level > 0.0 and not level / PROBE_SHIFT <= ewma.mean <= level * PROBE_SHIFT:
        ewma.restart(level)
        return
    for x in samples:
        ewma.update(x)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkParams:
    """Tuning of link estimators."""

    rtt_alpha: float = 0.125  # RFC 6298
    rtt_beta: float = 0.25
    bw_alpha: float = 0.25  # transfers are rarer than RTT probes: learn faster
    bw_beta: float = 0.25
    outlier_k: float = 4.0
    shift_after: int = 3
    min_transfer_bytes: int = 4096  # smaller transfers measure latency, not bandwidth
    decay_s: float = 300.0  # staleness: learned state keeps exp(-(age/decay_s)²) of its weight


class LinkEstimator:
    """RTT (smoothed mean + deviation) and bandwidth (time per bit, smoothed) of one link."""

    def __init__(self, prior: LinkEstimate, params: LinkParams | None = None) -> None:
        self.prior = prior
        self.params = p = params or LinkParams()
        self._rtt = RobustEwma(
            alpha=p.rtt_alpha, beta=p.rtt_beta, outlier_k=p.outlier_k, shift_after=p.shift_after
        )
        # Averaging seconds per bit (not bits per second) keeps transfer-time predictions
        # unbiased: T = 8·L·spb is linear in spb.
        self._spb = RobustEwma(
            alpha=p.bw_alpha, beta=p.bw_beta, outlier_k=p.outlier_k, shift_after=p.shift_after
        )
        self._rtt_at = -math.inf
        self._bw_at = -math.inf
        self._fresh_s = _fresh_for(p.decay_s)

    def observe_rtt(self, seconds: float, now: float) -> bool:
        """Feed one round-trip time; False (ignored) when it is not a finite value >= 0."""
        if not (0.0 <= seconds <= MAX_SECONDS and math.isfinite(now)):
            return False
        self._rtt.update(seconds)
        self._rtt_at = now
        return True

    def observe_transfer(self, nbytes: float, seconds: float, now: float) -> bool:
        """Feed one transfer of `nbytes` taking `seconds` (excluding the RTT)."""
        ok = nbytes <= MAX_BYTES and 0.0 < seconds <= MAX_SECONDS and math.isfinite(now)
        if not ok or not nbytes >= self.params.min_transfer_bytes:
            return False
        self._spb.update(min(MAX_S_PER_BIT, max(MIN_S_PER_BIT, seconds / (8.0 * nbytes))))
        self._bw_at = now
        return True

    def observe_probe(self, rtts: Sequence[float], nbytes: float, seconds: Sequence[float],
                      now: float) -> bool:
        """A probe burst: round trips carrying no payload (`rtts`), then exchanges moving
        `nbytes` each, taking `seconds` each (core/probing.py). False, ignored, when a figure
        is not finite, out of bounds, or `nbytes` is too small to measure bandwidth.

        Unlike a task's exchange it is a deliberate measurement of the link as it is now:
        - the transfer time is what is left of each exchange after the burst's own median
          round trip (not the RTT estimate, which may be the stale one being tested);
        - an exchange too quick to measure (transfer under a quarter of its time) counts at
          the bandwidth it shows at least;
        - a burst whose median is off the estimate by more than PROBE_SHIFT (either way)
          restarts it there. A recovered uplink's collapse-time figures are replaced in one
          probe; fed as samples they would crawl back by alpha-sized steps.
        """
        ok = (bool(rtts) and bool(seconds) and self.params.min_transfer_bytes <= nbytes
              <= MAX_BYTES and math.isfinite(now)
              and all(0.0 <= x <= MAX_SECONDS for x in (*rtts, *seconds)))
        if not ok:
            return False
        rtt = statistics.median(rtts)
        _probe_update(self._rtt, rtt, rtts)
        spbs = [min(MAX_S_PER_BIT, max(MIN_S_PER_BIT, max(t - rtt, 0.25 * t) / (8.0 * nbytes)))
                for t in seconds]
        _probe_update(self._spb, statistics.median(spbs), spbs)
        self._rtt_at = self._bw_at = now
        return True

    @property
    def taught_at(self) -> float:
        """When the link was last taught both its figures: the older of its latest RTT
        sample and its latest bandwidth sample (-inf until it has had both)."""
        return min(self._rtt_at, self._bw_at)

    def snapshot(self, now: float) -> LinkEstimate:
        """The current estimate, blended towards the prior as observations age."""
        prior, decay = self.prior, self.params.decay_s
        rtt, rtt_std = prior.rtt_s, prior.rtt_std_s
        ewma, fresh_s = self._rtt, self._fresh_s
        if ewma.n:
            age = now - self._rtt_at
            if age > fresh_s:
                w = _staleness_weight(age, decay)
                rtt, rtt_std = _blend(w, ewma.mean, ewma.mdev * _MDEV_TO_STD, rtt, rtt_std)
            else:  # fresh: the learned values as they are
                rtt, rtt_std = ewma.mean, ewma.mdev * _MDEV_TO_STD
        bw, bw_std = prior.bandwidth_bps, prior.bandwidth_std_bps
        ewma = self._spb
        if ewma.n and ewma.mean > 0.0:
            spb, spb_std = ewma.mean, ewma.mdev * _MDEV_TO_STD
            age = now - self._bw_at
            if age > fresh_s:
                w = _staleness_weight(age, decay)
                spb, spb_std = _blend(w, spb, spb_std, 1.0 / bw, bw_std / (bw * bw))
            spb = min(MAX_S_PER_BIT, max(MIN_S_PER_BIT, spb))
            bw, bw_std = 1.0 / spb, min(spb_std / (spb * spb), 1.0 / MIN_S_PER_BIT)
        return LinkEstimate(rtt_s=rtt, rtt_std_s=rtt_std, bandwidth_bps=bw,
                            bandwidth_std_bps=bw_std)

    @property
    def samples(self) -> tuple[int, int]:
        """(RTT samples, transfer samples) seen so far."""
        return self._rtt.n, self._spb.n


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecPrior:
    """What we believe about a task type's execution time before measuring (at speed 1)."""

    mean_s: float = 0.05
    s_per_mb: float = 0.0
    cv: float = 0.5  # spread of the prior, relative to its mean

    def __post_init__(self) -> None:
        require_finite("mean_s", self.mean_s, minimum=0.0)
        require_finite("s_per_mb", self.s_per_mb, minimum=0.0)
        require_finite("cv", self.cv, minimum=0.0)

    def scaled(self, speed: float) -> ExecPrior:
        """The prior on a node `speed` times as fast as the reference."""
        require_finite("speed", speed)
        if speed <= 0.0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        return ExecPrior(mean_s=self.mean_s / speed, s_per_mb=self.s_per_mb / speed, cv=self.cv)


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecParams:
    """Tuning of execution-time estimators."""

    forgetting: float = 0.98  # RLS forgetting factor: ~50 samples of memory
    prior_weight: float = 1.0  # the prior counts as this many samples
    residual_alpha: float = 0.1  # smoothing of the squared prediction error
    outlier_k: float = 4.0
    shift_after: int = 3
    min_samples: int = 3  # below this the prior's spread still applies
    decay_s: float = 600.0


class ExecTimeEstimator:
    """Execution time of one task type on one node as a + b·size_mb, by recursive least squares.

    Keeps the residual variance of its one-step-ahead predictions as its spread. Starts at the
    prior (worth `prior_weight` samples) and its covariance is capped at the prior's, so a
    stream of same-sized inputs (which says nothing about b) cannot wind it up.
    """

    def __init__(self, prior: ExecPrior, params: ExecParams | None = None) -> None:
        self.prior = prior
        self.params = p = params or ExecParams()
        self.a, self.b = prior.mean_s, prior.s_per_mb
        self._cap = 1.0 / max(p.prior_weight, 1e-9)
        self.p11, self.p12, self.p22 = self._cap, 0.0, self._cap
        self.res_var = (prior.cv * max(prior.mean_s, 1e-6)) ** 2
        self.n = 0
        self._streak = 0
        self._streak_err = 0.0  # sum of the current outlier streak's errors
        self._at = -math.inf
        self._decay_s = p.decay_s
        self._fresh_s = _fresh_for(p.decay_s)

    def observe(self, input_bytes: float, seconds: float, now: float) -> bool:
        """Feed one measured execution; False (ignored) for non-finite or negative values."""
        ok = 0.0 <= input_bytes <= MAX_BYTES and 0.0 <= seconds <= MAX_SECONDS
        if not ok or not math.isfinite(now):
            return False
        x = input_bytes / MB
        p = self.params
        err = seconds - (self.a + self.b * x)
        if self.n >= p.min_samples:  # outliers are clipped once the spread means something
            res_std = math.sqrt(self.res_var)
            bound = p.outlier_k * (res_std if res_std > 1e-9 else 1e-9)
            if -bound <= err <= bound:
                self._streak = 0
            else:
                err = self._clip_outlier(err, bound)
        # P·x and x'·P·x for x = (1, size_mb)
        p11, p12, p22 = self.p11, self.p12, self.p22
        px1 = p11 + p12 * x
        px2 = p12 + p22 * x
        lam = p.forgetting
        denom = lam + px1 + px2 * x
        k1, k2 = px1 / denom, px2 / denom
        self.a += k1 * err
        self.b += k2 * err
        p11 = (p11 - k1 * px1) / lam
        p12 = (p12 - k1 * px2) / lam
        p22 = (p22 - k2 * px2) / lam
        cap = self._cap  # anti-windup: scale each direction back to the prior's covariance
        if p11 > cap or p22 > cap:
            s1 = math.sqrt(cap / p11) if p11 > cap else 1.0
            s2 = math.sqrt(cap / p22) if p22 > cap else 1.0
            p11 *= s1 * s1
            p22 *= s2 * s2
            p12 *= s1 * s2
        self.p11, self.p12, self.p22 = p11, p12, p22
        self.res_var += p.residual_alpha * (err * err - self.res_var)
        self.n += 1
        self._at = now
        return True

    def _clip_outlier(self, err: float, bound: float) -> float:
        """An error beyond `bound`: clipped, or the end of a level-shift streak."""
        p = self.params
        side = 1 if err > 0 else -1
        if self._streak * side > 0:
            self._streak += side
            self._streak_err += err
        else:
            self._streak, self._streak_err = side, err
        if abs(self._streak) >= p.shift_after:
            # A level shift (the node got slower or faster): move the intercept by the
            # streak's average error at once and re-open the covariance to learn the rest.
            jump = self._streak_err / abs(self._streak)
            self.a += jump
            self.p11, self.p12, self.p22 = self._cap, 0.0, self._cap
            self.res_var = max(self.res_var, (jump / 4.0) ** 2)
            self._streak = 0
            return err - jump
        return math.copysign(bound, err)

    def predict(self, input_bytes: float, now: float) -> ExecEstimate:
        """Mean and std of the execution time for an input of `input_bytes`."""
        # The input size clamped into 0..MAX_BYTES (NaN counts as 0 bytes).
        x = input_bytes if 0.0 <= input_bytes <= MAX_BYTES else (
            MAX_BYTES if input_bytes > MAX_BYTES else 0.0)
        x /= MB
        prior = self.prior
        prior_mean = prior.mean_s + prior.s_per_mb * x
        prior_mean = prior_mean if prior_mean < MAX_SECONDS else MAX_SECONDS
        prior_std = prior.cv * prior_mean
        prior_std = prior_std if prior_std < MAX_SECONDS else MAX_SECONDS
        if self.n == 0:
            return ExecEstimate(mean_s=prior_mean, std_s=prior_std)
        mean = self.a + self.b * x
        mean = mean if mean > 0.0 else 0.0
        leverage = self.p11 + 2.0 * self.p12 * x + self.p22 * x * x
        var = self.res_var * (1.0 + leverage) if leverage > 0.0 else self.res_var
        std = math.sqrt(var) if var > 0.0 else 0.0
        if self.n < self.params.min_samples and std < prior_std:
            std = prior_std
        age = now - self._at
        if age > self._fresh_s:  # as LinkEstimator.snapshot: fresh estimates skip the blend
            w = _staleness_weight(age, self._decay_s)
            mean, std = _blend(w, mean, std, prior_mean, prior_std)
        return ExecEstimate(mean_s=mean if mean < MAX_SECONDS else MAX_SECONDS,
                            std_s=std if std < MAX_SECONDS else MAX_SECONDS)


class EstimatorBank:
    """All estimators of one deciding node, keyed by target / (task type, node), LRU-bounded.

    Priors come from the caller: per task type (at speed 1), a speed per node (the prior is
    divided by it), and a link prior per target. Unknown keys use the defaults. When more than
    `max_keys` estimators of a kind exist, the least recently used one is dropped (`evictions`).
    """

    def __init__(
        self,
        *,
        exec_priors: dict[str, ExecPrior] | None = None,
        default_exec_prior: ExecPrior | None = None,
        speeds: dict[str, float] | None = None,
        link_priors: dict[str, LinkEstimate] | None = None,
        default_link_prior: LinkEstimate | None = None,
        exec_params: ExecParams | None = None,
        link_params: LinkParams | None = None,
        max_keys: int = 4096,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.exec_priors = dict(exec_priors or {})
        self.default_exec_prior = default_exec_prior or ExecPrior()
        self.speeds = dict(speeds or {})
        self.link_priors = dict(link_priors or {})
        self.default_link_prior = default_link_prior or LinkEstimate(
            rtt_s=0.01, rtt_std_s=0.005, bandwidth_bps=1e7, bandwidth_std_bps=2e6
        )
        self.exec_params = exec_params or ExecParams()
        self.link_params = link_params or LinkParams()
        self.max_keys = max_keys
        self._exec: OrderedDict[tuple[str, str], ExecTimeEstimator] = OrderedDict()
        self._links: OrderedDict[str, LinkEstimator] = OrderedDict()
        self.evictions = 0
        self.rejected = 0  # observations ignored as invalid (NaN, negative, ...)
        # Per task type, the node whose estimator of it learned most recently: a node that has
        # not run the type yet borrows its lesson, speed-scaled (`exec_estimate`). At most one
        # entry per task type, bounded like the estimators.
        self._donors: OrderedDict[str, str] = OrderedDict()

    def set_speed(self, node_id: str, speed: float) -> None:
        ExecPrior().scaled(speed)  # validates
        self.speeds[node_id] = speed

    def set_link_prior(self, target: str, prior: LinkEstimate) -> None:
        self.link_priors[target] = prior
        if target in self._links:
            self._links[target].prior = prior

    def exec_prior(self, task_type: str, node_id: str) -> ExecPrior:
        base = self.exec_priors.get(task_type, self.default_exec_prior)
        return base.scaled(self.speeds.get(node_id, 1.0))

    def _exec_for(self, task_type: str, node_id: str, create: bool) -> ExecTimeEstimator | None:
        key = (task_type, node_id)
        est = self._exec.get(key)
        if est is not None:
            self._exec.move_to_end(key)
        elif create:
            est = ExecTimeEstimator(self.exec_prior(task_type, node_id), self.exec_params)
            self._exec[key] = est
            if len(self._exec) > self.max_keys:
                self._exec.popitem(last=False)
                self.evictions += 1
        return est

    def _link_for(self, target: str, create: bool) -> LinkEstimator | None:
        est = self._links.get(target)
        if est is not None:
            self._links.move_to_end(target)
        elif create:
            est = LinkEstimator(self.link_prior(target), self.link_params)
            self._links[target] = est
            if len(self._links) > self.max_keys:
                self._links.popitem(last=False)
                self.evictions += 1
        return est

    def observe_exec(
        self, task_type: str, node_id: str, input_bytes: float, seconds: float, now: float
    ) -> bool:
        est = self._exec_for(task_type, node_id, True)
        ok = est is not None and est.observe(input_bytes, seconds, now)
        self.rejected += not ok
        if ok:
            self._donors[task_type] = node_id
            self._donors.move_to_end(task_type)
            if len(self._donors) > self.max_keys:
                self._donors.popitem(last=False)
        return ok

    def observe_rtt(self, target: str, seconds: float, now: float) -> bool:
        est = self._link_for(target, True)
        ok = est is not None and est.observe_rtt(seconds, now)
        self.rejected += not ok
        return ok

    def observe_transfer(self, target: str, nbytes: float, seconds: float, now: float) -> bool:
        """A transfer too small to measure bandwidth is ignored without counting as rejected."""
        est = self._link_for(target, True)
        if est is None:
            return False
        ok = est.observe_transfer(nbytes, seconds, now)
        if not ok and not (nbytes < self.link_params.min_transfer_bytes and seconds > 0):
            self.rejected += 1
        return ok

    def observe_bandwidth(self, target: str, bps: float, now: float) -> bool:
        """A link monitor's bandwidth reading (bits/s), fed as one transfer lasting long
        enough to pass `min_transfer_bytes` (a modem's `uplink_bps`, say)."""
        if not 0.0 < bps < INF:
            self.rejected += 1
            return False
        seconds = max(1.0, 8.0 * self.link_params.min_transfer_bytes / bps)
        return self.observe_transfer(target, bps * seconds / 8.0, seconds, now)

    def observe_exchange(self, target: str, nbytes: float, seconds: float, now: float) -> bool:
        """One request/response with `target`: `nbytes` moved (both ways) in `seconds` of
        network time (the whole round trip minus the remote's own queue and execution time).

        One figure holds both the RTT and the transfer time; it is split with the current
        estimates: a small exchange (< `min_transfer_bytes`) is an RTT sample once its
        predicted transfer time is taken off; a larger one is a bandwidth sample once the
        current RTT estimate is taken off (skipped when that leaves less than a quarter of
        the time: the RTT estimate, not the link, explains it).
        """
        ok = 0.0 <= nbytes <= MAX_BYTES and 0.0 <= seconds <= MAX_SECONDS
        if not ok or not math.isfinite(now):
            self.rejected += 1
            return False
        link = self.link(target, now)
        if nbytes < self.link_params.min_transfer_bytes:
            transfer = 8.0 * nbytes / link.bandwidth_bps
            return self.observe_rtt(target, max(0.0, seconds - transfer), now)
        transfer = seconds - link.rtt_s
        if transfer < 0.25 * seconds:
            return False
        return self.observe_transfer(target, nbytes, transfer, now)

    def observe_probe(self, target: str, rtts: Sequence[float], nbytes: float,
                      seconds: Sequence[float], now: float) -> bool:
        """A probe burst to `target` (`LinkEstimator.observe_probe`)."""
        est = self._link_for(target, True)
        ok = est is not None and est.observe_probe(rtts, nbytes, seconds, now)
        self.rejected += not ok
        return ok

    def link_taught_at(self, target: str) -> float:
        """`LinkEstimator.taught_at` of the link to `target`; -inf when never."""
        est = self._links.get(target)
        return -INF if est is None else est.taught_at

    def link_prior(self, target: str) -> LinkEstimate:
        """What the link to `target` is taken to be before anything is learned."""
        return self.link_priors.get(target, self.default_link_prior)

    def exec_estimate(
        self, task_type: str, node_id: str, input_bytes: float, now: float
    ) -> ExecEstimate:
        est = self._exec_for(task_type, node_id, False)
        if est is None:  # no observation yet: another node's lesson, or the prior
            borrowed = self._borrowed(task_type, node_id, input_bytes, now)
            if borrowed is not None:
                return borrowed
            prior = self.exec_prior(task_type, node_id)
            size = min(MAX_BYTES, max(0.0, input_bytes))
            mean = min(MAX_SECONDS, prior.mean_s + prior.s_per_mb * size / MB)
            return ExecEstimate(mean_s=mean, std_s=min(MAX_SECONDS, prior.cv * mean))
        return est.predict(input_bytes, now)

    def has_exec(self, task_type: str, node_id: str) -> bool:
        """True when `node_id` has an estimator of its own for the type (it ran one)."""
        return (task_type, node_id) in self._exec

    def _borrowed(self, task_type: str, node_id: str, input_bytes: float,
                  now: float) -> ExecEstimate | None:
        """What the type taught on the node that ran it last, scaled by the two nodes' speeds
        (`speed(donor) / speed(node)`), its spread at least the prior's relative spread: a
        configured prior is a guess (a hash's 0.05 s against ~2 ms measured), a measurement on
        a similar node is not. None when no other node has run the type."""
        donor = self._donors.get(task_type)
        if donor is None or donor == node_id:
            return None
        est = self._exec.get((task_type, donor))
        if est is None or est.n == 0:
            return None
        learned = est.predict(input_bytes, now)
        scale = self.speeds.get(donor, 1.0) / self.speeds.get(node_id, 1.0)
        mean = min(MAX_SECONDS, learned.mean_s * scale)
        cv = self.exec_priors.get(task_type, self.default_exec_prior).cv
        std = min(MAX_SECONDS, max(learned.std_s * scale, cv * mean))
        return ExecEstimate(mean_s=mean, std_s=std)

    def link(self, target: str, now: float) -> LinkEstimate:
        est = self._link_for(target, False)
        if est is None:
            return self.link_prior(target)
        return est.snapshot(now)

    def __len__(self) -> int:
        return len(self._exec) + len(self._links)
