"""What a deciding node learns from its attempts, shared by the daemon (node/dispatch.py) and
the simulator's daemon model (sim/brains.py): the estimators' lesson from a reply, and the
attempts under way that a target's own load report cannot show yet."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import TaskSpec


def learn_from_reply(
    bank: EstimatorBank, task: TaskSpec, target: str, *, local: bool, round_trip_s: float,
    wait_s: float, exec_s: float, nbytes: float, now: float,
) -> None:
    """Feed one successful attempt on `target` into the estimators.

    `round_trip_s`: from sending the attempt to its reply, as this node timed it; `wait_s` and
    `exec_s`: the target's own queueing and execution time, as its reply says (the cloud's
    whole latency counts as execution); `nbytes`: input plus output moved over the link.
    - Execution time (unless the task's is exactly known): a local attempt counts all but its
      queueing (the executor's IPC and bookkeeping are part of what running here costs); a
      remote one counts what the target reports.
    - The network, for a remote target: the round trip minus the target's own time is one
      exchange of `nbytes`; the bank splits it into RTT or bandwidth with its current
      estimates (a node cannot time the two transfers and the RTT apart).
    """
    if task.exact_s is None:
        seconds = max(0.0, round_trip_s - wait_s) if local else exec_s
        bank.observe_exec(task.task_type, target, task.work, seconds, now)
    if not local:
        network = round_trip_s - wait_s - exec_s
        bank.observe_exchange(target, nbytes, max(0.0, network), now)


class _Holds:
    """Per target, a value held until a deadline that doubles with each event in a row: the
    `strikes`-th event since the target's streak was cleared holds it for `hold_s`, each
    further one twice as long as the one before, up to `max_hold_s`. Bounded: at most
    `max_targets` targets in each table (the oldest dropped). `Refusals` holds refusing
    targets with it, `InFlight` the lateness of attempts given up."""

    def __init__(self, hold_s: float, max_hold_s: float, max_targets: int,
                 strikes: int = 1) -> None:
        self.hold_s, self.max_hold_s = hold_s, max_hold_s
        self.max_targets, self.strikes = max_targets, strikes
        self.held: dict[str, tuple[float, float]] = {}  # target -> (value, until)
        self._rows: dict[str, int] = {}  # target -> events since its streak was cleared

    def strike(self, target: str, value: float, now: float) -> None:
        row = self._rows.pop(target, 0) + 1
        self._rows[target] = row
        if row >= self.strikes:
            hold = min(self.max_hold_s, self.hold_s * 2.0 ** min(row - self.strikes, 30))
            self.held.pop(target, None)
            self.held[target] = (value, now + hold)
        for table in (self.held, self._rows):
            if len(table) > self.max_targets:
                del table[next(iter(table))]

    def clear(self, target: str) -> None:
        self.held.pop(target, None)
        self._rows.pop(target, None)


class InFlight:
    """Attempts this node has sent to other targets and not yet seen settled.

    An attempt counts against its target only while the target's latest load report may not
    show it: one sent after that report was received. A target's report counts what it had
    received before publishing, so counting older attempts too would count our own tasks
    twice and make idle targets look busy; a target that publishes no load (the cloud) has
    every attempt counted. This node's own executor is never a target here: its load is live.
    """

    def __init__(self, *, strikes: int = 2, hold_s: float = 1.0, max_hold_s: float = 30.0,
                 max_targets: int = 1024) -> None:
        if not 0.0 < hold_s <= max_hold_s or max_targets < 1 or strikes < 1:
            raise ValueError("need 0 < hold_s <= max_hold_s, strikes >= 1, max_targets >= 1")
        self._sent: dict[str, dict[int, float]] = {}  # target -> token -> when it was sent
        self._due: dict[int, float] = {}  # token -> when its reply is overdue
        self._tokens = itertools.count()
        # Attempts given up without a reply: per target, how late the last one was, held
        # (see `gave_up`).
        self._overdue = _Holds(hold_s, max_hold_s, max_targets, strikes)

    def sent(self, target: str, now: float, expect_s: float = math.inf) -> int:
        """Count an attempt sent to `target` at `now`, expected back within `expect_s` (the
        latency quantile it was judged on); returns the token to settle it with."""
        token = next(self._tokens)
        self._sent.setdefault(target, {})[token] = now
        if math.isfinite(expect_s):
            self._due[token] = now + expect_s
        return token

    def lateness(self, now: float) -> dict[str, float]:
        """Per target, how far past the latency quantile it was judged on its most overdue
        attempt in flight is, or how late its last attempt given up was while that is held
        (`gave_up`; targets with neither are absent): evidence that the
        target, or the way to it, got slower than its estimates know — a collapsed uplink,
        a node that died — before any reply can teach it (the replies are the slow ones).
        `build_candidates(late=...)` adds it to the target's wait, so the penalty grows
        with the evidence: a little late costs a little, seconds late rule it out for
        deadlines. On generated scenarios (seed 4242) this took cost's misses from 0.032 to
        0.014 under a WAN collapse and from 0.023 to 0.013 through an outage."""
        out: dict[str, float] = {}
        held = self._overdue.held
        if held:
            for target, (late, until) in list(held.items()):
                if now >= until:
                    del held[target]
                else:
                    out[target] = late
        if not self._due:
            return out
        for target, sent in self._sent.items():
            worst = max((now - self._due.get(token, math.inf) for token in sent),
                        default=-math.inf)
            if worst > out.get(target, 0.0):
                out[target] = worst
        return out

    def settled(self, target: str, token: int, now: float | None = None) -> None:
        """The attempt got its reply or failed (unknown tokens are ignored). Given `now`, a
        reply back within the quantile it was judged on also clears the evidence of the
        target's earlier timeouts (`gave_up`): the target and the way to it answer again."""
        due = self._due.pop(token, None)
        sent = self._sent.get(target)
        if sent is not None:
            sent.pop(token, None)
            if not sent:
                del self._sent[target]
        if now is not None and due is not None and now <= due:
            self._overdue.clear(target)

    def gave_up(self, target: str, token: int, now: float) -> None:
        """The attempt got no reply in time (it timed out, or its target went away): it is
        settled, and from the `strikes`-th such attempt in a row (no attempt to the target
        answered in time since) how late it was when given up stays the target's lateness
        for a hold: `hold_s`, doubling with each further one up to `max_hold_s`. An attempt
        answered in time clears it (`settled`); the hold also ends on its own, so that the
        target is tried again and a path that recovered is noticed.

        Without this the evidence vanished with the attempt: under a collapsed uplink each
        deadline task of a node went to the cloud, timed out at its deadline, and the next
        one did the same for the whole collapse (a generated WAN-collapse scenario lost 46
        tasks so; running everything locally lost 2). Two strikes, not one: a single timeout
        is often one long task of a heavy-tailed type on a healthy target, and holding that
        target back moved work onto slower ones (docs/cost-model.md has the measurements)."""
        due = self._due.get(token)
        self.settled(target, token)
        if due is None or now <= due:
            return
        self._overdue.strike(target, now - due, now)

    def unreported(self, reported_at: Mapping[str, float]) -> dict[str, int]:
        """Per target, the attempts sent after `reported_at[target]`, when its latest load
        report was received (all of them for a target that never reported)."""
        counts: dict[str, int] = {}
        for target, sent in self._sent.items():
            since = reported_at.get(target)
            n = len(sent) if since is None else len([t for t in sent.values() if t > since])
            if n:
                counts[target] = n
        return counts


class Refusals:
    """Targets that refused an attempt (admission: queue full, or the deadline cannot be met
    there), held back until they can take work again.

    A refusal is evidence the deciding node's picture of the target was wrong. The target is
    held back (its candidate is `refused`: no capacity) until a load report newer than the
    refusal arrives — the report then says whether it has room — or, for a target that
    reports nothing (a cloud tier without telemetry), until a backoff runs out: `backoff_s`,
    doubling with each refusal in a row up to `max_backoff_s`, reset by a success. Without this,
    every task of a burst is sent to the same refusing target first (issue 20: 147 of 150).
    Bounded: at most `max_targets` targets are remembered (the oldest refusal is dropped)."""

    def __init__(self, *, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_targets: int = 1024) -> None:
        if not 0.0 < backoff_s <= max_backoff_s or max_targets < 1:
            raise ValueError("need 0 < backoff_s <= max_backoff_s and max_targets >= 1")
        # target -> (refused at, held until), and the refusals since its last success
        self._holds = _Holds(backoff_s, max_backoff_s, max_targets)

    def refused(self, target: str, now: float) -> None:
        """`target` refused an attempt at `now`."""
        self._holds.strike(target, now, now)

    def accepted(self, target: str) -> None:
        """`target` took an attempt: it is no longer held back, its backoff starts over."""
        self._holds.clear(target)

    def held(self, reported_at: Mapping[str, float], now: float) -> frozenset[str]:
        """The targets held back at `now`: refused, no report received since, backoff left.
        `reported_at[t]`: when `t`'s latest load report was received (absent: never)."""
        held = self._holds.held
        if not held:
            return frozenset()
        out = []
        for target, (at, until) in list(held.items()):
            if now >= until or reported_at.get(target, -math.inf) > at:
                del held[target]  # expired, or a newer report speaks for it
            else:
                out.append(target)
        return frozenset(out)

    def __len__(self) -> int:
        return len(self._holds.held)
