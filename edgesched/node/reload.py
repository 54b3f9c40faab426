"""SIGHUP: re-read the config and apply what can change while the node runs.

The node's object graph stays as `build_runtime` built it; a reload swaps three well-defined
parts and nothing else:

- the decision policy (`policy.*`: name, weights, parameters), in the pipeline's dispatcher;
- the task types: a type added or enabled gets its handler built, one removed or disabled is
  refused from then on, and a running type's settings that are read per task change:
  `deadline_s`, `timeout_s`, `offload`, `idempotent`, `output_bytes` (a task already accepted
  keeps the values it was accepted with); the state document announces the new set;
- logging (`log.level`, `log.format`).

Everything else (broker, HTTP, identity, executor slots, a running type's handler, command,
environment, cpu_bound or priors, ...) is reported as needing a restart and keeps its running
value. A config that does not load or validate, or a new type whose handler cannot be loaded,
is refused whole: the running one stays, the error is logged. Each applied change is one log
line: `reloaded policy.energy_weight 0.002 -> 0.5`, `reloaded task_types.resize: added`.
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
# Policy keys read once at start: the decision snapshot's shortlist is sized when it is built.
RESTART_POLICY_KEYS = ("policy.max_candidates",)


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


def _runs(settings: Settings, name: str) -> bool:
    spec = settings.task_types.get(name)
    return spec is not None and spec.enabled


def reloadable(change: Change, running: Settings, new: Settings) -> bool:
    """May this change be applied to a running node?"""
    key = change.key
    if key in RESTART_POLICY_KEYS:
        return False
    if key.startswith("policy.") or key in ("log.level", "log.format"):
        return True
    parts = key.split(".")
    if parts[0] == "task_types" and len(parts) >= 3:
        name, field = parts[1], parts[2]
        if not (_runs(running, name) and _runs(new, name)):
            return True  # a type added, enabled, removed or disabled: as a whole
        return field in RELOADABLE_TASK_KEYS
    return False


def task_types_in_effect(running: Settings, new: Settings) -> dict[str, Any]:
    """The new task types, where a type that keeps running keeps its restart-only settings."""
    types: dict[str, Any] = {}
    for name, fresh in new.task_types.items():
        if _runs(running, name) and fresh.enabled:
            old = running.task_types[name]
            types[name] = old.model_copy(
                update={k: getattr(fresh, k) for k in RELOADABLE_TASK_KEYS})
        else:
            types[name] = fresh
    return types


def _type_event(name: str, running: Settings, new: Settings) -> str | None:
    """`added`, `enabled`, `removed`, `disabled`, or None for a type that keeps running."""
    was, now = _runs(running, name), _runs(new, name)
    if was and not now:
        return "disabled" if name in new.task_types else "removed"
    if now and not was:
        return "enabled" if name in running.task_types else "added"
    return None


def _level(name: str) -> int:
    return int(logging.getLevelName(name.upper()))


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _applied_lines(applied: tuple[Change, ...], running: Settings,
                   new: Settings) -> list[str]:
    """`key old -> new` per change; a type added/removed/enabled/disabled is one line."""
    lines: list[str] = []
    for c in applied:
        parts = c.key.split(".")
        event = _type_event(parts[1], running, new) if parts[0] == "task_types" else None
        if event is None:
            lines.append(f"{c.key} {_shown(c.old)} -> {_shown(c.new)}")
        elif (line := f"task_types.{parts[1]}: {event}") not in lines:
            lines.append(line)
    return lines


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
        applied = tuple(c for c in found if reloadable(c, running, new))
        restart = tuple(c for c in found if not reloadable(c, running, new))
        if not found:
            log.info("reload: the configuration is unchanged")
            return ReloadResult()
        effective = running
        if applied:
            effective = running.model_copy(update={
                "policy": new.policy.model_copy(update={
                    key.removeprefix("policy."): getattr(running.policy,
                                                         key.removeprefix("policy."))
                    for key in RESTART_POLICY_KEYS}),
                "log": new.log,
                "task_types": task_types_in_effect(running, new)})
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
            for line in _applied_lines(applied, running, new):
                log.info("reloaded %s", line)
            if effective.log != running.log and not louder:
                self._apply_logging(effective.log)
        if restart:
            keys = [c.key for c in restart]
            shown = ", ".join(keys[:MAX_LOGGED_RESTART_KEYS])
            if len(keys) > MAX_LOGGED_RESTART_KEYS:
                shown += f" and {len(keys) - MAX_LOGGED_RESTART_KEYS} more"
            log.warning("reload: %d changed key(s) need a restart to take effect (still "
                        "running with the old values): %s", len(keys), shown)
        return ReloadResult(applied=applied, needs_restart=restart)
