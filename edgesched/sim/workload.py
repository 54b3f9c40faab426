"""The task stream of a scenario: arrival times and task sizes, drawn once per seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgesched.sim.scenario import ArrivalSpec, DevicesSpec, Scenario


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskStream:
    """Every task of a run, sorted by arrival time (parallel arrays, one row per task).

    Drawn from the scenario seed alone, so every policy of a comparison sees the same stream.
    """

    time: np.ndarray  # arrival time (s)
    origin: np.ndarray  # index into scenario.nodes
    ttype: np.ndarray  # index into scenario.task_types
    work: np.ndarray  # work units (seconds at speed 1)
    input_bytes: np.ndarray
    output_bytes: np.ndarray

    def __len__(self) -> int:
        return int(self.time.shape[0])


def _segments(spec: ArrivalSpec, duration: float) -> list[tuple[float, float, float]]:
    """Piecewise-constant rate of one arrival process: (start, end, rate) segments."""
    if spec.process == "poisson":
        return [(0.0, duration, spec.rate_per_s)]
    out: list[tuple[float, float, float]] = []
    t, burst = 0.0, spec.burst_offset_s % spec.burst_every_s
    while t < duration:
        if burst > t:  # the quiet stretch before the next burst
            out.append((t, min(burst, duration), spec.rate_per_s))
            t = min(burst, duration)
        if t >= duration:
            break
        end = min(burst + spec.burst_for_s, duration)
        out.append((t, end, spec.burst_rate_per_s))
        t, burst = end, burst + spec.burst_every_s
    return [s for s in out if s[1] > s[0]]


def arrival_times(spec: ArrivalSpec, duration: float, rng: np.random.Generator) -> np.ndarray:
    """A (non-homogeneous, piecewise-constant) Poisson process on [0, duration)."""
    parts = []
    for start, end, rate in _segments(spec, duration):
        n = int(rng.poisson(rate * (end - start)))
        if n:
            parts.append(rng.uniform(start, end, n))
    if not parts:
        return np.empty(0)
    return np.concatenate(parts)


def draw_stream(scenario: Scenario, seed: int) -> TaskStream:
    """All tasks of the scenario for this seed (independent of the policy being run)."""
    rng = np.random.default_rng(seed)
    node_index = {n.id: i for i, n in enumerate(scenario.nodes)}
    type_index = {t.name: i for i, t in enumerate(scenario.task_types)}
    times, origins, types = [], [], []
    for spec in scenario.arrivals:
        t = arrival_times(spec, scenario.duration_s, rng)
        times.append(t)
        origins.append(np.full(t.shape[0], node_index[spec.node], dtype=np.int64))
        types.append(np.full(t.shape[0], type_index[spec.type], dtype=np.int64))
    if scenario.devices is not None and scenario.devices.count:
        dev_times, dev_origins, dev_types = device_arrivals(scenario, rng)
        times.append(dev_times)
        origins.append(dev_origins)
        types.append(dev_types)
    time = np.concatenate(times) if times else np.empty(0)
    order = np.argsort(time, kind="stable")
    time = time[order]
    origin = np.concatenate(origins)[order] if origins else np.empty(0, dtype=np.int64)
    ttype = np.concatenate(types)[order] if types else np.empty(0, dtype=np.int64)
    n = time.shape[0]
    work, inb, outb = np.empty(n), np.empty(n), np.empty(n)
    for k, tt in enumerate(scenario.task_types):
        mask = ttype == k
        m = int(mask.sum())
        work[mask] = tt.work.sample(rng, m)
        inb[mask] = tt.input_bytes.sample(rng, m)
        outb[mask] = tt.output_bytes.sample(rng, m)
    return TaskStream(time=time, origin=origin, ttype=ttype, work=work,
                      input_bytes=inb, output_bytes=outb)


def device_arrivals(scenario: Scenario, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tasks of the `devices:` block (EdgeCloudSim's IdleActiveLoadGenerator and
    NomadicMobility): each device draws its app by share; its first active period starts
    uniformly within one active period after `start_s`; while active it submits tasks with
    exponential gaps of mean `interarrival_s` (a gap that crosses the end of the active
    period is dropped and the next period starts `idle_s` later); each task goes to the node
    the device is attached to at that moment. Returns (times, node indices, type indices)."""
    dev: DevicesSpec = scenario.devices  # type: ignore[assignment]
    duration = scenario.duration_s
    node_index = {n.id: i for i, n in enumerate(scenario.nodes)}
    type_index = {t.name: i for i, t in enumerate(scenario.task_types)}
    shares = np.array([a.share for a in dev.apps], dtype=float)
    app_of = rng.choice(len(dev.apps), size=dev.count, p=shares / shares.sum())
    dwell = np.array([m for _, m in dev.dwell_s], dtype=float)
    dwell_nodes = np.array([node_index[n] for n, _ in dev.dwell_s], dtype=np.int64)
    times, origins, types = [], [], []
    for d in range(dev.count):
        app = dev.apps[int(app_of[d])]
        t_dev = _active_idle_times(app.interarrival_s, app.active_s, app.idle_s,
                                   dev.start_s, duration, rng)
        if dwell.size:  # nomadic mobility: where the device is at each arrival
            starts, places = _nomadic_path(dwell, dev.start_s, duration, rng)
            where = dwell_nodes[places[np.searchsorted(starts, t_dev, side="right") - 1]]
        else:
            where = np.full(t_dev.shape[0], rng.integers(len(scenario.nodes)), dtype=np.int64)
        times.append(t_dev)
        origins.append(where)
        types.append(np.full(t_dev.shape[0], type_index[app.type], dtype=np.int64))
    return np.concatenate(times), np.concatenate(origins), np.concatenate(types)


def _active_idle_times(gap: float, active: float, idle: float, start: float, end: float,
                       rng: np.random.Generator) -> np.ndarray:
    out: list[float] = []
    period = rng.uniform(start, start + active)
    t = period
    while t < end:
        t += rng.exponential(gap)
        if t > period + active:
            period += active + idle
            t = period
            continue
        if t < end:
            out.append(t)
    return np.array(out, dtype=float)


def _nomadic_path(dwell: np.ndarray, start: float, end: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times at each place, place indices): a uniform first place, exponential
    stays of the place's mean, then a uniformly drawn other place."""
    n = dwell.shape[0]
    place = int(rng.integers(n))
    starts, places = [-np.inf], [place]
    t = start
    while t < end:
        t += rng.exponential(dwell[place])
        if n > 1:
            nxt = int(rng.integers(n - 1))
            place = nxt + 1 if nxt >= place else nxt
        starts.append(t)
        places.append(place)
    return np.array(starts), np.array(places, dtype=np.int64)
