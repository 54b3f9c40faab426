"""Command line: argument parsing, signals, exit codes and the event loop.

Each command's body lives in the module that owns the capability; this module only parses,
sets up logging (edgesched.logs), wires SIGTERM/SIGINT to a shutdown event, and maps errors to
the exit codes of contract §1. SIGHUP is `run`'s: the composition root installs it
(service.run, a config reload). The operator-facing help text is DESCRIPTION/EPILOG below.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edgesched import __version__
from edgesched.errors import ConfigError, EdgeschedError, KeyFileError, UsageError
from edgesched.logs import setup_logging

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
    "replay": ("edgesched.sim.replay:replay_command", False),
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


DESCRIPTION = """\
edgesched schedules tasks across edge nodes, their neighbours and a cloud tier over MQTT.
Each node runs `edgesched run`; the other commands check, inspect and drive nodes."""

EPILOG = """\
configuration: --config FILE, else $EDGESCHED_CONFIG, else built-in defaults; any key can be
overridden from the environment (mqtt.host -> EDGESCHED_MQTT__HOST). `edgesched COMMAND
--help` shows each command with an example. Exit codes: 0 ok, 1 failure, 2 usage error,
78 configuration error. Documentation: docs/running.md."""


def _log_flags(parser: argparse.ArgumentParser, *, on_subcommand: bool) -> None:
    """--log-level/--log-format, accepted before or after the subcommand. On a subcommand
    their default is SUPPRESS, so an absent flag does not overwrite one given before it."""
    default: Any = argparse.SUPPRESS if on_subcommand else None
    group = parser.add_argument_group("logging") if on_subcommand else parser
    group.add_argument("--log-level", type=str.upper, default=default,
                       choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                       help="override log.level (DEBUG, INFO, WARNING, ERROR)")
    group.add_argument("--log-format", default=default, choices=("text", "json"),
                       help="override log.format (text or json)")


def _command(sub: Any, name: str, summary: str, example: str,
             details: str = "") -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does, with an example."""
    text = summary[0].upper() + summary[1:] + "." + (f"\n\n{details}" if details else "")
    cmd: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=text, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _log_flags(cmd, on_subcommand=True)
    return cmd


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgesched", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgesched {__version__}")
    _log_flags(parser, on_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = _command(sub, "run", "run the node daemon (role edge or cloud, from the config)",
                   "edgesched run --config /etc/edgesched/edgesched.yaml",
                   "SIGTERM/SIGINT drain and stop; SIGHUP re-reads the config and applies "
                   "what can change\nwhile running (policy, task type limits, log level); "
                   "see docs/running.md.")
    run.add_argument("--config", help="YAML config file (default: $EDGESCHED_CONFIG)")

    check = _command(sub, "check-config", "validate the config and print the effective one "
                     "(secrets masked)", "edgesched check-config --config edgesched.yaml --quiet",
                     "Exit 0 when valid, 78 with one line per problem when not.")
    check.add_argument("--config", help="YAML config file (default: $EDGESCHED_CONFIG)")
    check.add_argument("--quiet", "-q", action="store_true",
                       help="print nothing when the config is valid (only errors)")

    demo = _command(sub, "demo", "run a whole edge cluster on this machine for a while",
                    "edgesched demo --duration 30",
                    "Starts an MQTT broker (or uses --broker), several edge nodes, a cloud node "
                    "and a device\nfleet, shows a live view and prints a summary.")
    demo.add_argument("--duration", type=_positive_float, default=60.0, help="seconds (60)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--broker", type=_broker, help="HOST:PORT of an MQTT v5 broker")
    demo.add_argument("--json", dest="json_path", help="write the summary as JSON here")

    sim = _command(sub, "simulate", "compare policies on a scenario in the simulator",
                   "edgesched simulate configs/scenarios/hotspot.yaml --policy cost --policy local")
    sim.add_argument("scenario", nargs="?", help="scenario YAML file (not with --generate)")
    sim.add_argument("--policy", action="append", dest="policies", help="repeatable")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--json", dest="json_path", help="write the report as JSON here")
    sim.add_argument("--plot", dest="plot_path", help="write a PNG comparison here")
    sim.add_argument("--sweep", metavar="KEY=START:STOP:STEP",
                     help="run every policy at each value of a numeric scenario key (dotted "
                     "path), e.g. devices=200:2400:200; --plot draws miss ratio and latency")
    sim.add_argument("--jobs", type=int, default=None,
                     help="--sweep: local worker processes (default: the CPU count)")
    sim.add_argument("--generate", metavar="FAMILY",
                     help="draw --count scenarios of a family (mixed, contention, heavy_tail, "
                     "wan_collapse, outage, battery, or all) from --seed, run them and print "
                     "the distribution of cost/oracle and cost/best baseline")
    sim.add_argument("--count", type=int, default=None, help="--generate: how many (10)")
    sim.add_argument("--out", help="--generate: write the scenarios (YAML) into this directory")
    sim.add_argument("--no-run", action="store_true", help="--generate: only write them")
    sim.add_argument("--dask", metavar="tcp://HOST:PORT",
                     help="--sweep: run on this Dask distributed scheduler instead")

    rep = _command(sub, "replay", "replay a node's recorded traffic under other policies",
                   "edgesched replay /var/lib/edgesched/record --policy local --policy cloud",
                   "Reads the record files of record.path (docs/replay.md), fits execution "
                   "times and links\nto what was measured, and replays the recorded arrivals "
                   "in the simulator.\nExit 0 done; 2 unknown --policy or no usable record.")
    rep.add_argument("record_dir", help="a node's record.path directory")
    rep.add_argument("--policy", action="append", dest="policies",
                     help="repeatable (default: the recorded policy); the hindsight oracle "
                     "is always added")
    rep.add_argument("--seed", type=int, default=1)
    rep.add_argument("--json", dest="json_path", help="write the report as JSON here")
    rep.add_argument("--plot", dest="plot_path", help="write a PNG comparison here")
    rep.add_argument("--emit-scenario", dest="scenario_path",
                     help="write a scenario YAML fitted to the recording here")
    rep.add_argument("--max-tasks", type=int, default=200_000,
                     help="replay at most the N most recent recorded tasks (200000)")

    submit = _command(sub, "submit", "submit one task to a node and print its reply",
                      "edgesched submit --node gw-1 --type hash --input "
                      "'{\"data\": \"x\", \"rounds\": 1000}'",
                      "Over MQTT by default: broker, TLS files and topic prefix come from the "
                      "config\n(--config, $EDGESCHED_CONFIG, EDGESCHED_MQTT__* variables); the "
                      "flags below win.\nWith --url, over HTTP to the node's API (POST "
                      "/v1/tasks, token and TLS as for `status`).\nExit 0 when the reply is ok, "
                      "1 otherwise (rejected, failed, expired, no broker, no reply).")
    submit.add_argument("--node", help="node id to submit to over MQTT (default: the "
                        "node_id of --config)")
    submit.add_argument("--type", required=True, dest="task_type", help="task type name")
    submit.add_argument("--input", default=None, help="task input as JSON")
    submit.add_argument("--deadline", type=_positive_float, default=None, help="seconds")
    submit.add_argument("--config", help="YAML config file (default: $EDGESCHED_CONFIG)")
    submit.add_argument("--url", default=None,
                        help="submit over HTTP to this node API base URL instead of MQTT")
    submit.add_argument("--broker", type=_broker, default=None,
                        help="HOST:PORT of the broker (default: the config's mqtt.host/port)")
    submit.add_argument("--topic-prefix", default=None,
                        help="default: the config's mqtt.topic_prefix")
    submit.add_argument("--timeout", type=_positive_float, default=120.0,
                        help="seconds to wait for the reply once submitted (120)")
    submit.add_argument("--connect-timeout", type=_positive_float, default=5.0,
                        help="seconds to wait for the broker or the node's API (5)")
    submit.add_argument("--token-file", help="bearer token of the node's API, with --url "
                        "(default: the config's http.token_file)")
    submit.add_argument("--ca-file", help="CA of the broker: connect with TLS (default: the "
                        "config's mqtt.tls.ca_file); with --url, the CA of the node's https")
    submit.add_argument("--cert-file", help="client certificate (mTLS); its CN names the "
                        "reply topic P/device/CN/reply/...")
    submit.add_argument("--key-file", help="the client certificate's key")
    submit.add_argument("--no-check-hostname", action="store_true",
                        help="accept a broker certificate that does not name the host")

    for name, helptext, example in (
            ("status", "show a node's state: neighbours, devices, tasks (its /v1/status)",
             "edgesched status --url http://127.0.0.1:8470"),
            ("healthcheck", "exit 0 when the node answers healthy (/healthz), else 1",
             "edgesched healthcheck --config /etc/edgesched/edgesched.yaml")):
        cmd = _command(sub, name, helptext, example)
        cmd.add_argument("--url", default=None, help="node base URL (default from config)")
        cmd.add_argument("--config", help="YAML config file, for the default URL and token")
        cmd.add_argument("--timeout", type=_positive_float, default=5.0)
        cmd.add_argument("--token-file", help="bearer token of the node's API (default: the "
                         "config's http.token_file)")
        cmd.add_argument("--ca-file", help="CA of the node's https certificate (default: the "
                         "config's http.tls.cert_file, for a self-signed one)")
        cmd.add_argument("--cert-file", help="client certificate, for http.tls.client_ca_file")
        cmd.add_argument("--key-file", help="the client certificate's key")
        if name == "status":
            cmd.add_argument("--task", metavar="ID", help="show one recent task instead: "
                             "its outcome, attempts, every candidate and why (/v1/tasks/ID)")
            cmd.add_argument("--json", action="store_true",
                             help="print the JSON (the default when stdout is not a terminal)")

    keygen = _command(sub, "keygen", "make a node's Ed25519 signing key pair",
                      "edgesched keygen gw-1 --dir /etc/edgesched/keys")
    keygen.add_argument("node_id", metavar="NODE_ID")
    keygen.add_argument("--dir", required=True, help="writes DIR/NODE_ID.key and NODE_ID.pem")
    keygen.add_argument("--force", action="store_true", help="replace existing files")

    pki = _command(sub, "dev-pki", "make a CA, broker/node/device certificates, node "
                   "signing keys and the mosquitto ACL (docs/security.md)",
                   "edgesched dev-pki ./pki --node gw-1 --node gw-2 --device cam-1")
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

    _command(sub, "version", "print the version (like --version)", "edgesched version")
    return parser


def version_command(args: argparse.Namespace) -> int:
    print(f"edgesched {__version__}")
    return EXIT_OK


def check_config_command(args: argparse.Namespace) -> int:
    import yaml

    from edgesched.config import config_path_from_env, load_settings, masked_dump
    from edgesched.node.service import message_security

    settings = load_settings(config_path_from_env(args.config))
    message_security(settings)  # unusable key files are configuration errors too
    if not getattr(args, "quiet", False):  # --quiet: ExecStartPre keeps the journal clean
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
    setup_logging(getattr(args, "log_level", None) or "INFO",
                  getattr(args, "log_format", None) or "text")
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
