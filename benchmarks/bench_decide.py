"""Decision speed: single decisions (cost policy) and the numpy batch path, per candidate count.

Goal (issue 16): single decision p99 <= 100 us at 8 candidates (issue 3's p50 <= 10 us is
retired: a decision is ~1% of a task's ~1.2 ms budget, and readability won). The numpy batch
path (benchmarks/batch.py, not used by the daemon or the simulator) is timed for comparison.
Also prints, measured in the same run, a reference: the cost of building a 10-field frozen
dataclass and a CandidateEval, of one numpy ufunc call and of an empty call, so the figures
can be read against this machine's speed.

    .venv/bin/python benchmarks/bench_decide.py [--repeat N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from batch import BatchView, decide_batch
from bytecodes import per_function
from interpreter import describe

from edgesched.core.costmodel import CostParams
from edgesched.core.model import (
    Candidate,
    CandidateEval,
    ExecEstimate,
    LinkEstimate,
    Placement,
    PowerModel,
    TaskSpec,
)
from edgesched.core.policies import make_policy

TASK = TaskSpec(task_type="detect", input_bytes=200_000, output_bytes=1_000, work=200_000,
                deadline_s=0.5)


def candidates(n: int) -> list[Candidate]:
    """A local node, n-2 neighbours with differing queues, and the cloud."""
    origin = PowerModel(idle_w=3.0, busy_w=6.0, tx_w=1.5, rx_w=1.0)
    out = [Candidate(node_id="gw-0", placement=Placement.LOCAL, slots=2, running=2, queued=1,
                     est_wait_s=0.1, wait_std_s=0.05, power=origin, battery=0.6,
                     exec=ExecEstimate(mean_s=0.2, std_s=0.06))]
    for i in range(1, n - 1):
        out.append(Candidate(
            node_id=f"gw-{i}", placement=Placement.NEIGHBOUR, slots=2, running=i % 3,
            est_wait_s=0.02 * (i % 5), wait_std_s=0.01 * (i % 5), power=PowerModel(),
            link=LinkEstimate(rtt_s=0.004, rtt_std_s=0.001, bandwidth_bps=1e8,
                              bandwidth_std_bps=1e7),
            exec=ExecEstimate(mean_s=0.2, std_s=0.06), origin_power=origin, origin_battery=0.6,
        ))
    out.append(Candidate(
        node_id="cloud", placement=Placement.CLOUD, slots=64,
        link=LinkEstimate(rtt_s=0.08, rtt_std_s=0.01, bandwidth_bps=2e7, bandwidth_std_bps=2e6),
        exec=ExecEstimate(mean_s=0.025, std_s=0.008), origin_power=origin, origin_battery=0.6,
    ))
    return out


def timings_ns(fn: Callable[[], object], repeat: int) -> list[int]:
    for _ in range(min(200, repeat)):  # warm up
        fn()
    out = []
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            fn()
            out.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    out.sort()
    return out


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e3


def bytecodes(fn: Callable[[], object]) -> int:
    """Bytecodes one call of `fn` executes, after a warm-up call (first-call work is not the
    steady state)."""
    fn()
    return sum(per_function(fn).values())


def bench_single(repeat: int, rounds: int) -> None:
    """p50 of each round, headline = the best round (as `timeit` advises: noise only adds),
    with the spread of the rounds printed next to it; p99 over every sample of every round.
    This machine's speed drifts by ~1.5x between phases (see the reference lines), so one
    round alone can land in a slow phase."""
    policy = make_policy("cost", CostParams(), np.random.default_rng(0))
    print("single decision (cost policy, plain Python, full Decision with every evaluation)")
    print(f"  {'candidates':>10} {'decisions/s':>12} {'p50 us':>8} {'p99 us':>8} "
          f"{'round p50s us':>16} {'bytecodes':>10}")
    for n in (2, 8, 32):
        cands = candidates(n)
        samples: list[int] = []
        p50s: list[float] = []
        for _ in range(rounds):
            ns = timings_ns(partial(policy.decide, TASK, cands, 0.0), repeat)  # no extra frame
            samples += ns
            p50s.append(pct(ns, 0.5))
        samples.sort()
        rate = 1e9 / (sum(samples) / len(samples))
        spread = f"{min(p50s):.1f}-{max(p50s):.1f}"
        ops = bytecodes(partial(policy.decide, TASK, cands, 0.0))
        print(f"  {n:>10} {rate:>12,.0f} {min(p50s):>8.1f} {pct(samples, 0.99):>8.1f} "
              f"{spread:>16} {ops:>10}")


def bench_batch(repeat: int) -> None:
    params = CostParams()
    rng = np.random.default_rng(1)
    print("batched (numpy; view built once per burst, then n tasks decided together;")
    print("         spread = each task sees the queue the earlier ones built, Python loop)")
    print(f"  {'candidates':>10} {'tasks':>6} {'us/task':>8} {'+view us/task':>14} "
          f"{'tasks/s':>12} {'spread us/task':>15} {'1-task batch us':>16}")
    for n in (2, 8, 32):
        cands = candidates(n)
        for tasks in (1, 256, 1024):
            inp = rng.uniform(1e4, 1e6, tasks)
            out = rng.uniform(1e2, 1e4, tasks)
            rem = rng.uniform(0.2, 2.0, tasks)
            view = BatchView.from_candidates(cands, params)
            reps = max(20, repeat // max(1, tasks // 8))
            ns = timings_ns(lambda v=view, i=inp, o=out, r=rem: decide_batch(
                v, params, input_bytes=i, output_bytes=o, remaining_s=r), reps)
            view_ns = timings_ns(lambda c=cands: BatchView.from_candidates(c, params),
                                 max(20, reps // 10))
            per = pct(ns, 0.5) / tasks
            with_view = (pct(ns, 0.5) + pct(view_ns, 0.5)) / tasks
            if tasks == 1:
                print(f"  {n:>10} {tasks:>6} {'':>8} {'':>14} {'':>12} {'':>15} "
                      f"{pct(ns, 0.5):>16.1f}")
                continue
            spread_ns = timings_ns(lambda v=view, i=inp, o=out, r=rem: decide_batch(
                v, params, input_bytes=i, output_bytes=o, remaining_s=r, spread=True),
                max(10, reps // 4))
            print(f"  {n:>10} {tasks:>6} {per:>8.3f} {with_view:>14.3f} {1e6 / per:>12,.0f} "
                  f"{pct(spread_ns, 0.5) / tasks:>15.3f}")


@dataclass(frozen=True, kw_only=True, slots=True)
class _FrozenRecord:
    """Ten fields, like a CandidateEval, as a frozen slots dataclass (for the reference)."""

    a: str
    b: str
    c: float
    d: float
    e: float
    f: float
    g: float
    h: bool
    i: object = None
    j: float = 0.0


def bench_reference(repeat: int) -> None:
    def record() -> _FrozenRecord:
        return _FrozenRecord(a="x", b="local", c=1.0, d=1.0, e=1.0, f=0.0, g=1.0, h=True)

    def evaluation() -> CandidateEval:
        return CandidateEval(node_id="x", placement=Placement.LOCAL, latency_mean_s=1.0,
                             latency_q_s=1.0, energy_j=1.0, money=0.0, score=1.0,
                             feasible=True)

    a = np.ones(8)
    print(f"reference on this machine, same run, {describe()}")
    print(f"  10-field frozen slots dataclass built by keyword: p50 "
          f"{pct(timings_ns(record, repeat), 0.5):.2f} us")
    print(f"  CandidateEval(...) (a slots dataclass) built by keyword: p50 "
          f"{pct(timings_ns(evaluation, repeat), 0.5):.2f} us")
    print(f"  one numpy ufunc call on 8 floats (np.add): p50 "
          f"{pct(timings_ns(lambda: np.add(a, a), repeat), 0.5):.2f} us")
    print(f"  empty Python call: p50 {pct(timings_ns(lambda: None, repeat), 0.5):.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20_000, help="timed calls per figure")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of single decisions")
    args = parser.parse_args()
    bench_single(args.repeat, max(1, args.rounds))
    bench_batch(args.repeat)
    bench_reference(args.repeat)
    print("goal: single decision p99 <= 100 us at 8 candidates")


if __name__ == "__main__":
    main()
