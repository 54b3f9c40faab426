"""The recent-task store (GET /v1/tasks/{id}): bytes per record and time per finished task.

A task decided among `--candidates` candidates with one attempt, as the pipeline hands it to
the store (`TaskLog.on_task_finished(trace, line)`, its record line encoded once for every
trace sink): prints the bytes counted per kept task, how many fit in the default
`http.recent_tasks_bytes`, and the cost per task of encoding its line and keeping it (on the
event loop, for every task) and of a lookup (building the record, only when asked). Figures
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import time

from edgesched.core.model import Placement
from edgesched.node.tasklog import DEFAULT_MAX_BYTES, TaskLog
from edgesched.node.trace import CandidateTrace, TaskTrace, new_trace, record_line


def trace(i: int, candidates: int) -> TaskTrace:
    t = new_trace(task_id=f"task-{i:08d}", task_type="hash", origin="gw-1", role="edge",
                  received_at=time.monotonic(), work=1024.0, exact_s=None, input_bytes=64,
                  output_bytes=128, deadline_s=0.5, priority=0, device_id="cam-1")
    t.candidates = [
        CandidateTrace(node_id=f"gw-{k}", placement="neighbour" if k else "local",
                       slots=2, running=1, queued=k, est_wait_s=0.01 * k, exec_mean_s=0.03,
                       exec_std_s=0.01, rtt_s=0.004 if k else None, bandwidth_bps=1e8 if k
                       else None, latency_mean_s=0.05 + 0.01 * k, latency_q_s=0.08,
                       energy_j=0.4, score=0.05 + 0.01 * k, feasible=k != 1,
                       reason="no_capacity" if k == 1 else None)
        for k in range(candidates)]
    t.chosen, t.chosen_score, t.policy = "gw-0", 0.05, "cost"
    t.add_attempt(node_id="gw-0", placement=Placement.LOCAL, outcome="ok",
                  started=t.arrived_mono_s + 0.0003, duration_s=0.041, exec_s=0.04,
                  executed_by="gw-1")
    t.status, t.placement, t.executed_by, t.latency_s = "ok", "local", "gw-1", 0.0415
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args()
    traces = [trace(i, args.candidates) for i in range(args.tasks)]
    log = TaskLog()
    started = time.perf_counter()
    for t in traces:
        log.on_task_finished(t, record_line(t))
    record_us = (time.perf_counter() - started) / len(traces) * 1e6
    one = log.bytes / len(log)
    started = time.perf_counter()
    for t in traces[-len(log):]:
        log.get(t.id)
    get_us = (time.perf_counter() - started) / len(log) * 1e6
    encoded = len(json.dumps(log.get(traces[-1].id)))
    print(f"{args.candidates} candidates: {one:.0f} B counted per kept task (its JSON record "
          f"{encoded} B); {len(log)} tasks kept in "
          f"{DEFAULT_MAX_BYTES >> 20} MiB ({log.evicted} evicted); encode + keep "
          f"{record_us:.1f} us, lookup {get_us:.1f} us per task")


if __name__ == "__main__":
    main()
