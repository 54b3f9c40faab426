"""The one exception tree of edgesched; adapters map foreign errors onto it at the boundary.

    EdgeschedError
    ├── ConfigError                 invalid configuration (exit code 78); carries `problems`
    │   └── ScenarioError           invalid simulator scenario (also exit 78)
    ├── UsageError                  bad command-line use (exit code 2)
    ├── NotImplementedYetError      a command whose capability has not landed (exit code 1)
    ├── TransportError              a network peer could not be reached or answered badly
    │   ├── MqttError               broker connection / publish / subscribe failed
    │   └── HttpError               HTTP client or server failure
    │       └── UnauthorizedError   the peer refused our token (401/403)
    ├── TaskError                   a task could not be run
    │   ├── InvalidTaskError        the submission itself is wrong (-> `rejected`)
    │   ├── UnknownTaskTypeError    the type is not configured on this node (-> `rejected`)
    │   ├── TaskTimeoutError        the handler ran past its timeout (-> `failed`)
    │   └── HandlerError            the handler raised or exited non-zero (-> `failed`)
    └── StallError                  the event loop stalled past its limit (daemon exits non-zero)

Expected outcomes of scheduling (no feasible target, a neighbour rejecting work) are values
returned by the core, not exceptions.
"""

from __future__ import annotations


class EdgeschedError(Exception):
    """Base of every error edgesched raises on purpose."""


class ConfigError(EdgeschedError):
    """Configuration is invalid; `problems` holds `(dotted.key, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in self.problems))

    def lines(self) -> list[str]:
        """One `dotted.key: problem` line per problem, as the CLI prints them."""
        return [f"{key}: {msg}" if key else msg for key, msg in self.problems]


class ScenarioError(ConfigError):
    """A simulator scenario is invalid."""


class UsageError(EdgeschedError):
    """The command line is wrong."""


class NotImplementedYetError(EdgeschedError):
    """The command exists in the contract but its capability has not landed yet."""


class TransportError(EdgeschedError):
    """A network peer (broker, neighbour, cloud) could not be reached or misbehaved."""


class MqttError(TransportError):
    """The MQTT broker connection, a publish or a subscribe failed."""


class HttpError(TransportError):
    """An HTTP request failed or answered with an unusable response.

    `reason` is a short fixed label for metrics: `timeout`, `unreachable`, `http_status`, ...
    """

    def __init__(self, message: str, *, reason: str = "http_status") -> None:
        super().__init__(message)
        self.reason = reason


class UnauthorizedError(HttpError):
    """The peer refused our credentials (HTTP 401/403): a wrong or missing token."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="unauthorized")


class TaskError(EdgeschedError):
    """A task could not be run."""


class InvalidTaskError(TaskError):
    """The submission is malformed or its input does not fit the task type."""


class UnknownTaskTypeError(TaskError):
    """The task type is not configured on this node."""


class TaskTimeoutError(TaskError):
    """The handler ran past its timeout."""


class HandlerError(TaskError):
    """The handler raised, or the command exited non-zero."""


class StallError(EdgeschedError):
    """The event loop was blocked longer than the configured stall limit."""
