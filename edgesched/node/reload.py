"""SIGHUP: re-read the config and apply what can change while the node runs.

The node's object graph stays as `build_runtime` built it; a reload swaps three well-defined
parts and nothing else:

- the decision policy (`policy.*`: name, weights, parameters), in the pipeline's dispatcher;
- the settings of configured task types that are read per task: `deadline_s`, `timeout_s`,
  `offload`, `idempotent`, `output_bytes` (a task already accepted keeps the values it was
  accepted with);
- logging (`log.level`, `log.format`).

Everything else (broker, HTTP, identity, executor slots, adding or removing a task type, a
type's handler, priors, ...) is reported as needing a restart and keeps its running value. A
config that does not load or validate is refused whole: the running one stays, the error is
logged. Each applied change is one log line: `reloaded policy.energy_weight 0.002 -> 0.5`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from edgesched.config import Settings
from edgesched.errors import ConfigError, EdgeschedError

log = logging.getLogger("edgesched.reload")

# Per-task settings of a task type: read when a task is accepted, safe to change between tasks.
RELOADABLE_TASK_KEYS = ("deadline_s", "timeout_s", "offload", "idempotent", "output_bytes")
MAX_LOGGED_RESTART_KEYS = 20


@dataclass(frozen=True)
class Change:
    key: str  # dotted config key
    old: Any
    new: Any


@dataclass(frozen=True)
class ReloadResult:
    applied: tuple[Change, ...] = ()
    needs_restart: tuple[Change, ...] = ()
    error: str | None = None


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def changes(old: Settings, new: Settings) -> list[Change]:
    """Every dotted key whose effective value differs (secrets compare by their file path)."""
    before = dict(_flatten(old.model_dump(mode="json"), ""))
    after = dict(_flatten(new.model_dump(mode="json"), ""))
    missing = object()
    return [Change(key, before.get(key, missing), after.get(key, missing))
            for key in sorted(before.keys() | after.keys())
            if before.get(key, missing) != after.get(key, missing)]


def reloadable(change: Change, running: Settings) -> bool:
    """May this change be applied to a running node?"""
    key = change.key
    if key.startswith("policy.") or key in ("log.level", "log.format"):
        return True
    parts = key.split(".")
    if parts[0] == "task_types" and len(parts) == 3:
        name, field = parts[1], parts[2]
        return name in running.task_types and field in RELOADABLE_TASK_KEYS
    return False


def _level(name: str) -> int:
    return int(logging.getLevelName(name.upper()))


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _restart_keys(restart: tuple[Change, ...], running: Settings, new: Settings) -> list[str]:
    """The keys to name; a task type added or removed is one entry, not one per field."""
    keys: list[str] = []
    for c in restart:
        parts = c.key.split(".")
        if parts[0] == "task_types" and len(parts) >= 2:
            name = parts[1]
            if name not in running.task_types or name not in new.task_types:
                what = "added" if name not in running.task_types else "removed"
                entry = f"task_types.{name} ({what})"
                if entry not in keys:
                    keys.append(entry)
                continue
        keys.append(c.key)
    return keys


class Reloader:
    """Holds the settings in effect and applies a newly read config to the running parts.

    `apply_policy(policy_settings)`, `apply_task_types(task_type_settings)` and
    `apply_logging(log_settings)` are the reloadable parts' setters, given by the composition
    root (the pipeline's and edgesched.logs'); each may raise `EdgeschedError` to refuse.
    """

    def __init__(self, settings: Settings, *,
                 apply_policy: Callable[[Any], None],
                 apply_task_types: Callable[[Mapping[str, Any]], None],
                 apply_logging: Callable[[Any], None]) -> None:
        self.settings = settings  # what the node runs with now
        self._apply_policy = apply_policy
        self._apply_task_types = apply_task_types
        self._apply_logging = apply_logging

    def reload(self, load: Callable[[], Settings]) -> ReloadResult:
        """Read the config again with `load` and apply what can be applied (logged)."""
        log.info("SIGHUP: reloading the configuration")
        try:
            new = load()
        except ConfigError as exc:
            text = "; ".join(exc.lines())
            log.error("reload refused, the running configuration is kept: %s", text)
            return ReloadResult(error=text)
        running = self.settings
        found = changes(running, new)
        applied = tuple(c for c in found if reloadable(c, running))
        restart = tuple(c for c in found if not reloadable(c, running))
        if not found:
            log.info("reload: the configuration is unchanged")
            return ReloadResult()
        effective = running
        if applied:
            types = dict(running.task_types)
            for name, spec in running.task_types.items():
                if name in new.task_types:
                    fresh = new.task_types[name]
                    types[name] = spec.model_copy(
                        update={k: getattr(fresh, k) for k in RELOADABLE_TASK_KEYS})
            effective = running.model_copy(update={"policy": new.policy, "log": new.log,
                                                   "task_types": types})
            try:
                # the task types' setter is the one that may refuse: it goes first, so a
                # refusal leaves everything as it was (the others take validated settings)
                if effective.task_types != running.task_types:
                    self._apply_task_types(effective.task_types)
                if effective.policy != running.policy:
                    self._apply_policy(effective.policy)
            except (EdgeschedError, ValueError) as exc:
                log.error("reload refused, the running configuration is kept: %s", exc)
                return ReloadResult(error=str(exc))
            self.settings = effective
            # the "reloaded" lines are logged at the more verbose of the old and new levels
            louder = _level(effective.log.level) < _level(running.log.level)
            if effective.log != running.log and louder:
                self._apply_logging(effective.log)
            for c in applied:
                log.info("reloaded %s %s -> %s", c.key, _shown(c.old), _shown(c.new))
            if effective.log != running.log and not louder:
                self._apply_logging(effective.log)
        if restart:
            keys = _restart_keys(restart, running, new)
            shown = ", ".join(keys[:MAX_LOGGED_RESTART_KEYS])
            if len(keys) > MAX_LOGGED_RESTART_KEYS:
                shown += f" and {len(keys) - MAX_LOGGED_RESTART_KEYS} more"
            log.warning("reload: %d changed key(s) need a restart to take effect (still "
                        "running with the old values): %s", len(keys), shown)
        return ReloadResult(applied=applied, needs_restart=restart)
