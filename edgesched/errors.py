"""The one exception tree of edgesched; adapters map foreign errors onto it at the boundary.

    EdgeschedError
    ├── ConfigError                 invalid configuration (exit code 78); carries `problems`
    │   └── ScenarioError           invalid simulator scenario (also exit 78)
    ├── UsageError                  bad command-line use (exit code 2)
    ├── KeyFileError                a key or trust file cannot be used (names the file)
    ├── TransportError              a network peer could not be reached or answered badly
    │   ├── MqttError               broker connection / publish / subscribe failed
    │   ├── HttpError               HTTP client or server failure; `reason` is a metric label
    │   │   ├── HttpTimeoutError    no answer within the attempt's timeout (`timeout`)
    │   │   └── UnauthorizedError   the peer refused our token (401/403)
    │   └── ProbeError *            the demo's status poll got no usable answer (demo/probe.py)
    ├── TaskError                   a task could not be run
    │   ├── InvalidTaskError        the submission itself is wrong (-> `rejected`)
    │   │   └── SubmissionError *   a submission refused at intake, with its RejectCode
    │   │                           (node/protocol.py, beside the RejectCode it carries)
    │   ├── UnknownTaskTypeError    the type is not configured on this node (-> `rejected`)
    │   ├── QueueFullError          no slot and no queue place left (-> `rejected`)
    │   ├── TaskTimeoutError        the handler ran past its timeout (-> `failed`)
    │   │   └── DeadlineExpiredError  the task's own deadline passed (-> `expired`)
    │   └── HandlerError            the handler raised or exited non-zero (-> `failed`)
    ├── InputRejected               a message from outside refused where it entered; `reason`
    │   │                           is a bounded metric label, the message says what was wrong
    │   ├── TelemetryRejected       node or device telemetry (node/wire.py)
    │   └── MessageRejected         signature, signer, replay or clock skew (adapters/signing.py)
    ├── SubmitFailed *              `edgesched submit` gave up, the reason already worded for
    │                               the user (node/submit.py)
    └── ClusterError *              a demo node could not be started or stopped (demo/cluster.py)

`*`: defined in the module named, next to what it carries or the only code that raises it.
`InputRejected` and its subclasses are value-like: the stage that parses the message catches
them, counts the reason and drops (or answers) the message; they never leave that stage.

How an attempt or a task ended (ok, rejected, failed, timeout, expired, invalid) is the
value `core.model.Outcome`, not an exception; so are the other expected outcomes of
scheduling (no feasible target, a neighbour rejecting work).
"""

from __future__ import annotations

from enum import StrEnum


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


class KeyFileError(EdgeschedError):
    """A key file that cannot be used; the message says which file and what to fix."""


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


class HttpTimeoutError(HttpError):
    """The peer did not answer within the time we gave it (`reason` is `timeout`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="timeout")


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


class QueueFullError(TaskError):
    """No slot and no queue place left (-> `rejected`)."""


class TaskTimeoutError(TaskError):
    """The handler ran past its timeout."""


class DeadlineExpiredError(TaskTimeoutError):
    """The task's own deadline passed while it queued or ran (-> `expired`)."""


class HandlerError(TaskError):
    """The handler raised, or the command exited non-zero."""


class InputRejected(EdgeschedError):
    """A message from outside that is not accepted where it entered.

    `reason` is a bounded metric label (a `str` or a module's `StrEnum` of labels); the
    message (`detail`) says what was wrong. Caught by the stage that parsed the message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TelemetryRejected(InputRejected):
    """Node or device telemetry that is not taken into the view (node/wire.py)."""


class MessageRejected(InputRejected):
    """A node-to-node message that failed verification; `reason` is a signing.SignatureReject."""

    reason: StrEnum

    def __init__(self, reason: StrEnum, detail: str) -> None:
        super().__init__(reason, detail)
