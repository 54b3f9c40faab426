"""Bytecodes the interpreter executes per simulated task, per policy, and where they go.

This machine's wall-clock speed drifts by ~1.5x between phases (bench_sim.py's tasks/s move
with it), so speed work on the simulator is tracked with this machine-independent figure: a
`sys.settrace` opcode count over the same scenario as bench_sim.py (fewer tasks: tracing is
~50x slower). Each bytecode costs 3-5 ns here, plus the C work some of them trigger.

    .venv/bin/python benchmarks/sim_bytecodes.py [--tasks N] [--policy NAME]... [--top K]
"""

from __future__ import annotations

import argparse
import collections
from functools import partial

from bench_sim import scenario
from bytecodes import per_function

from edgesched.sim.policies import ALL_POLICY_NAMES
from edgesched.sim.runner import run_policy
from edgesched.sim.scenario import load_scenario
from edgesched.sim.workload import draw_stream


def count(policy: str, tasks: int) -> tuple[int, collections.Counter[str]]:
    sc = load_scenario(scenario(tasks))
    stream = draw_stream(sc, sc.seed)
    return len(stream), per_function(partial(run_policy, sc, policy, stream, sc.seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--policy", action="append", dest="policies")
    parser.add_argument("--top", type=int, default=0, help="also list the K busiest functions")
    args = parser.parse_args()
    for name in args.policies or ALL_POLICY_NAMES:
        n, per_function = count(name, args.tasks)
        total = sum(per_function.values())
        print(f"{name:16s} {total / n:7.0f} bytecodes/task ({n} tasks)", flush=True)
        for fn, ops in per_function.most_common(args.top):
            print(f"    {ops / n:7.0f}  {100 * ops / total:5.1f}%  {fn}")


if __name__ == "__main__":
    main()
