"""Command line: argument parsing, logging set-up, signals, exit codes and the event loop.

Each command's body lives in the module that owns the capability; this module only parses,
wires SIGTERM/SIGINT to a shutdown event, and maps errors to the exit codes of contract §1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edgesched import __version__
from edgesched.errors import ConfigError, EdgeschedError, KeyFileError, UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

log = logging.getLogger("edgesched.cli")

# command name -> ("module:function", is_async). Async commands are called as
# `await fn(args, shutdown_trigger)`; sync ones as `fn(args)`. Both return an exit code.
COMMANDS: dict[str, tuple[str, bool]] = {
    "run": ("edgesched.node.service:run_command", True),
    "check-config": ("edgesched.cli:check_config_command", False),
    "demo": ("edgesched.demo.command:demo_command", True),
    "simulate": ("edgesched.sim.command:simulate_command", False),
    "submit": ("edgesched.node.submit:submit_command", True),
    "status": ("edgesched.node.client:status_command", True),
    "healthcheck": ("edgesched.node.client:healthcheck_command", True),
    "version": ("edgesched.cli:version_command", False),
    "keygen": ("edgesched.cli:keygen_command", False),
    "dev-pki": ("edgesched.pki:dev_pki_command", False),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit code 2 is the contract's too
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgesched", description=__doc__)
    parser.add_argument("--log-level", default=None, help="override log.level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run the node daemon (role edge|cloud from config)")
    run.add_argument("--config", help="YAML config file (default: $EDGESCHED_CONFIG)")

    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("--config", help="YAML config file (default: $EDGESCHED_CONFIG)")

    demo = sub.add_parser("demo", help="run a whole edge cluster on this machine")
    demo.add_argument("--duration", type=_positive_float, default=60.0, help="seconds (60)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--broker", type=_broker, help="HOST:PORT of an MQTT v5 broker")
    demo.add_argument("--json", dest="json_path", help="write the summary as JSON here")

    sim = sub.add_parser("simulate", help="compare policies on a scenario")
    sim.add_argument("scenario", help="scenario YAML file")
    sim.add_argument("--policy", action="append", dest="policies", help="repeatable")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--json", dest="json_path", help="write the report as JSON here")
    sim.add_argument("--plot", dest="plot_path", help="write a PNG comparison here")

    submit = sub.add_parser("submit", help="submit one task over MQTT and print the reply")
    submit.add_argument("--node", required=True, help="node id to submit to")
    submit.add_argument("--type", required=True, dest="task_type")
    submit.add_argument("--input", default=None, help="task input as JSON")
    submit.add_argument("--deadline", type=_positive_float, default=None, help="seconds")
    submit.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883))
    submit.add_argument("--topic-prefix", default="edgesched")
    submit.add_argument("--timeout", type=_positive_float, default=120.0)
    submit.add_argument("--ca-file", help="CA of the broker: connect with TLS")
    submit.add_argument("--cert-file", help="client certificate (mTLS); its CN names the "
                        "reply topic P/device/CN/reply/...")
    submit.add_argument("--key-file", help="the client certificate's key")
    submit.add_argument("--no-check-hostname", action="store_true",
                        help="accept a broker certificate that does not name the host")

    for name, helptext in (("status", "pretty view of a node's /v1/status"),
                           ("healthcheck", "exit 0 when the node answers healthy")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--url", default=None, help="node base URL (default from config)")
        cmd.add_argument("--config", help="YAML config file, for the default URL and token")
        cmd.add_argument("--timeout", type=_positive_float, default=5.0)
        cmd.add_argument("--token-file", help="bearer token of the node's API (default: the "
                         "config's http.token_file)")
        cmd.add_argument("--ca-file", help="CA of the node's https certificate (default: the "
                         "config's http.tls.cert_file, for a self-signed one)")
        cmd.add_argument("--cert-file", help="client certificate, for http.tls.client_ca_file")
        cmd.add_argument("--key-file", help="the client certificate's key")

    keygen = sub.add_parser("keygen", help="make a node's Ed25519 signing key pair")
    keygen.add_argument("node_id", metavar="NODE_ID")
    keygen.add_argument("--dir", required=True, help="writes DIR/NODE_ID.key and NODE_ID.pem")
    keygen.add_argument("--force", action="store_true", help="replace existing files")

    pki = sub.add_parser("dev-pki", help="make a CA, broker/node/device certificates, node "
                         "signing keys and the mosquitto ACL (docs/security.md)")
    pki.add_argument("directory", metavar="DIR", help="where to write (created if missing)")
    pki.add_argument("--node", action="append", dest="nodes", metavar="NODE_ID",
                     help="a node id (repeatable; at least one)")
    pki.add_argument("--device", action="append", dest="devices", metavar="DEVICE_ID",
                     help="a device id (repeatable)")
    pki.add_argument("--broker-host", action="append", dest="broker_hosts", metavar="HOST",
                     help="name or address of the broker in its certificate (repeatable; "
                     "default localhost and 127.0.0.1)")
    pki.add_argument("--days", type=int, default=365, help="validity (365)")
    pki.add_argument("--topic-prefix", default="edgesched", help="for the ACL (edgesched)")
    pki.add_argument("--force", action="store_true", help="replace existing files")

    sub.add_parser("version", help="print the version")
    return parser


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Structured logs to stderr; `fmt` is `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("amqtt", "transitions", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def version_command(args: argparse.Namespace) -> int:
    print(f"edgesched {__version__}")
    return EXIT_OK


def check_config_command(args: argparse.Namespace) -> int:
    import yaml

    from edgesched.config import config_path_from_env, load_settings, masked_dump
    from edgesched.node.service import message_security

    settings = load_settings(config_path_from_env(args.config))
    message_security(settings)  # unusable key files are configuration errors too
    sys.stdout.write(yaml.safe_dump(masked_dump(settings), sort_keys=False))
    return EXIT_OK


def keygen_command(args: argparse.Namespace) -> int:
    """`edgesched keygen NODE_ID --dir DIR`: the key pair signed messages need."""
    from pathlib import Path

    from edgesched.adapters.signing import write_node_keypair

    try:
        key, pub = write_node_keypair(args.node_id, Path(args.dir), overwrite=args.force)
    except (KeyFileError, OSError) as exc:
        print(f"edgesched keygen: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {key} (private, mode 0600: this node's security.key_file)")
    print(f"wrote {pub} (public: copy it into every node's security.trust_dir)")
    return EXIT_OK


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    fn: Callable[..., Any] = getattr(module, attr)
    return fn


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # non-Linux platforms: the stdlib loop works, only slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async(
    fn: Callable[[argparse.Namespace, Awaitable[None]], Awaitable[int]],
    args: argparse.Namespace,
) -> int:
    """Run an async command on uvloop; SIGTERM/SIGINT set the shutdown trigger it awaits."""

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async def shutdown_trigger() -> None:
            await stop.wait()

        return await fn(args, shutdown_trigger())

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        return runner.run(_main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level or "INFO")
    target, is_async = COMMANDS[args.command]
    try:
        fn = _resolve(target)
        code = run_async(fn, args) if is_async else fn(args)
        return int(code)
    except EdgeschedError as exc:
        return _report(exc, args.command)
    except BaseExceptionGroup as group:
        # A component failing inside the runtime's TaskGroup arrives wrapped; the user wants
        # its one-line reason and exit code, not the group's traceback.
        leaf = _first_edgesched_error(group)
        if leaf is None:
            raise
        return _report(leaf, args.command)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`edgesched status | head`): not worth a traceback. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


def _first_edgesched_error(group: BaseExceptionGroup[Any]) -> EdgeschedError | None:
    for exc in group.exceptions:
        if isinstance(exc, EdgeschedError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_edgesched_error(exc)
            if found is not None:
                return found
    return None


def _report(exc: EdgeschedError, command: str) -> int:
    """Print an expected failure as one line (config errors: one line per problem)."""
    if isinstance(exc, ConfigError):
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(exc, UsageError):
        print(f"edgesched: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"edgesched {command}: {exc}", file=sys.stderr)
    return EXIT_FAILURE

if __name__ == "__main__":
    raise SystemExit(main())
