"""Machine instructions per decision and per simulated task, counted by valgrind.

This machine's wall-clock speed drifts by ~1.5x between phases (every timing, references
included, moves with it), and bytecode counts miss the C work (float objects, tuple
comparisons, calls) that bytecodes trigger. An instruction count does neither: under
valgrind's cachegrind, the same interpreter, inputs and environment give the same count to
within a few instructions per unit. Each figure is the difference of two runs of the same
script, one with N units and one with none, so start-up and imports cancel out; ASLR, hash
randomisation and OpenBLAS's threads (whose spinning valgrind would count) are turned off.

    .venv/bin/python benchmarks/instructions.py [--decisions N] [--tasks N] [--policy NAME]...

Needs valgrind (Debian package `valgrind`). Each run costs ~50x its native time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from interpreter import describe

HERE = Path(__file__).resolve().parent

# Run inside valgrind: `decide N` makes N cost-policy decisions over bench_decide.py's
# 8 candidates; `simulate POLICY N` runs one policy on bench_sim.py's scenario with ~N tasks
# (N = 0: the scenario and stream are built, nothing is simulated).
_WORKLOAD = """
import sys
sys.path.insert(0, {here!r})
kind, args = sys.argv[1], sys.argv[2:]
if kind == "decide":
    import numpy as np
    from bench_decide import TASK, candidates
    from edgesched.core.costmodel import CostParams
    from edgesched.core.policies import make_policy
    decide = make_policy("cost", CostParams(), np.random.default_rng(0)).decide
    cands = candidates(8)
    for _ in range(int(args[0])):
        decide(TASK, cands, 0.0)
else:
    from bench_sim import scenario
    from edgesched.sim.runner import run_policy
    from edgesched.sim.scenario import load_scenario
    from edgesched.sim.workload import draw_stream
    sc = load_scenario(scenario(int(args[1])))
    stream = draw_stream(sc, sc.seed)
    print(len(stream))
    if args[0] != "none":
        run_policy(sc, args[0], stream, sc.seed)
"""


def instructions(*argv: str) -> tuple[int, str]:
    """(instructions executed, stdout) of the workload script run under cachegrind."""
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = ["setarch", "-R", "valgrind", "--tool=cachegrind", "--cache-sim=no",
           "--cachegrind-out-file=/dev/null", sys.executable, "-c",
           _WORKLOAD.format(here=str(HERE)), *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600,
                          check=False)
    match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"valgrind run failed ({' '.join(argv)}):\n{done.stderr[-2000:]}")
    return int(match.group(1).replace(",", "")), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--policy", action="append", dest="policies",
                        help="simulated policies to count (default: cost, random, least_loaded)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("setarch") is None:
        raise SystemExit("needs valgrind and setarch: apt-get install -y valgrind util-linux")
    print(describe())
    base, _ = instructions("decide", "0")
    total, _ = instructions("decide", str(args.decisions))
    print(f"cost policy, 8 candidates: {(total - base) / args.decisions:,.0f} "
          "instructions per decision")
    base, out = instructions("simulate", "none", str(args.tasks))
    tasks = int(out.split()[0])
    for policy in args.policies or ["cost", "random", "least_loaded"]:
        total, _ = instructions("simulate", policy, str(args.tasks))
        print(f"simulator, {policy:14s}: {(total - base) / tasks:,.0f} instructions per task "
              f"({tasks} tasks)")


if __name__ == "__main__":
    main()
