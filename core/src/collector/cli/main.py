"""The ``collector`` command.

argparse, and every heavy import inside the command that needs it, so that
``collector --help`` loads no plugin and stays well under half a second.

Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from collector.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    err,
    load,
    load_or_report,
    print_config_error,
    registry_from_args,
    settings,
    strict_plugins,
)
from collector.cli.examples import DOCS_URL, add_examples_parser, cmd_examples


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", type=Path, help="configuration file (env COLLECTOR_CONFIG)")
    g.add_argument("--preset", help="a preset shipped with the collector (env COLLECTOR_PRESET)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--strict-plugins",
        action="store_true",
        default=argparse.SUPPRESS,
        help="fail when any installed plugin cannot be loaded (env COLLECTOR_STRICT_PLUGINS=1)",
    )
    parser = argparse.ArgumentParser(
        prog="collector",
        description="Usage-metering collector: receive usage, buffer it on disk, deliver CloudEvents to OpenMeter.",
        parents=[common],
        epilog="Run `collector run` for the embedded default (HTTP on 127.0.0.1:8080); `collector examples` lists "
        f"ready configurations. Docs: {DOCS_URL}",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the versions (as `collector version`) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run the collector (embedded default without -c/--preset)")
    _config_args(run)

    validate = sub.add_parser("validate", parents=[common], help="check a configuration without starting anything")
    _config_args(validate)

    plugins = sub.add_parser("plugins", parents=[common], help="list installed plugins and their components")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    schema = sub.add_parser("schema", parents=[common], help="print the JSON Schema of the configuration")
    schema.add_argument("-o", "--output", type=Path, help="write to a file instead of stdout")

    sub.add_parser("version", help="print the version of the core and of each plugin")
    add_examples_parser(sub)

    bf = sub.add_parser("backfill", parents=[common], help="re-emit a pull receiver's windows for a time range")
    _config_args(bf)
    bf.add_argument("receiver", help="the pull receiver id, e.g. prometheus/gpu")
    bf.add_argument("--from", dest="start", required=True, help="start time, RFC 3339 (aligned down to a window)")
    bf.add_argument("--to", dest="end", required=True, help="end time, RFC 3339 (last window ends at or before it)")
    bf.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for delivery (default 3600)")
    bf.add_argument("--retries", type=int, default=5, help="attempts per failing window before giving up")
    bf.add_argument("--no-progress", action="store_true", help="no progress bars")

    mapp = sub.add_parser(
        "map", parents=[common], help="try a mapping expression or a pipeline's processors on sample input"
    )
    _config_args(mapp)
    mapp.add_argument("-e", "--expression", help="an inline mapping expression (instead of a configuration)")
    mapp.add_argument("--pipeline", help="the pipeline whose processors to run (default: the only one)")
    mapp.add_argument("-i", "--input", help="JSON, JSON array or JSON lines file; - or absent for stdin")
    mapp.add_argument("--meta", help="metadata for the expression, as a JSON object")
    mapp.add_argument(
        "--no-validate", action="store_true", help="do not check the output against the exporters' event rules"
    )

    dlq = sub.add_parser("dlq", parents=[common], help="inspect, replay or drop dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list dead letters"),
        ("replay", "send dead letters to the exporter again"),
        ("drop", "delete dead letters"),
    ):
        a = dlq_sub.add_parser(name, parents=[common], help=text)
        _config_args(a)
        a.add_argument("--exporter", help="exporter id (default: every exporter in the configuration)")
        a.add_argument("--processor", help="a processor's dead letters (on_error: dead_letter) instead")
        a.add_argument("--receiver", help="a receiver's dead letters (input it could not read, e.g. malformed lines)")
        a.add_argument("--ids", type=lambda s: [int(x) for x in s.split(",") if x], help="comma-separated entry ids")
        a.add_argument(
            "--worker",
            type=int,
            help="only worker shard N's dead letters (service.workers > 1); 0 is the primary process's",
        )
        if name == "list":
            a.add_argument("--limit", type=int, default=50, help="most entries to show (default 50)")
            a.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "drop":
            a.add_argument("--all", action="store_true", help="drop every entry (required without --ids)")
        if name == "replay":
            a.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
            a.add_argument("--no-progress", action="store_true", help="no progress bar")

    # `collector queue ACTION`: each action adds its own parser to queue_sub.
    queue = sub.add_parser("queue", parents=[common], help="work with exporter queues on disk")
    queue_sub = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    from collector.cli.queue import add_queue_parsers
    from collector.cli.salvage import add_salvage_parser

    add_queue_parsers(queue_sub, common, _config_args)
    add_salvage_parser(queue_sub, common, _config_args)
    return parser


# -- commands ---------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from collector.errors import ConfigError
    from collector.runtime import eventloop
    from collector.runtime.supervisor import ConfigSource, Runtime
    from collector.telemetry import setup_logging

    try:
        env_settings = settings()
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_CONFIG
    setup_logging(env_settings.log_level or "info", env_settings.log_format or "auto")
    log = logging.getLogger("collector.cli")
    found = load_or_report(args)
    if found is None:
        return EXIT_CONFIG
    registry, loaded = found
    tel = loaded.raw.service.telemetry
    setup_logging(tel.log_level, tel.log_format)
    registry.warn_broken()
    for warning in loaded.warnings:
        log.warning("configuration: %s", warning)
    log.info("configuration loaded from %s", loaded.source)
    if loaded.source.startswith("preset default") and "debug" in {c.type for c in loaded.components.values()}:
        log.warning(
            "OPENMETER_URL is not set: events are written to stdout by the debug exporter, not delivered "
            "anywhere. Set OPENMETER_URL (and OPENMETER_TOKEN) to deliver them to OpenMeter."
        )
    source = ConfigSource(loaded.source, lambda: load(args, registry))
    runtime = Runtime(source, loaded, registry)
    runtime.strict_plugins = strict_plugins(args)  # worker processes load plugins the same way
    try:
        loop_name, _ = eventloop.loop_factory(env_settings.event_loop)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_CONFIG
    log.debug("event loop: %s", loop_name)
    return eventloop.run(runtime.run(), env_settings.event_loop, env_settings.gil_switch_ms)


def cmd_validate(args: argparse.Namespace) -> int:
    found = load_or_report(args)
    if found is None:
        return EXIT_CONFIG
    registry, loaded = found
    for p in registry.failed():
        err(f"warning: plugin {p.name} ({p.label}) failed to load: {p.error}")
    for w in loaded.warnings:
        err(f"warning: {w}")
    raw = loaded.raw
    print(
        f"configuration OK: {len(raw.service.pipelines)} pipeline(s); "
        f"receivers: {', '.join(raw.receivers) or '-'}; processors: {', '.join(raw.processors) or '-'}; "
        f"exporters: {', '.join(raw.exporters) or '-'}"
    )
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    import json

    registry = registry_from_args(args)
    if args.json:
        print(json.dumps([p.as_dict() for p in registry.plugins], indent=2))
    else:
        rows = [("NAME", "DISTRIBUTION", "VERSION", "STATUS", "COMPONENTS")]
        for p in registry.plugins:
            listed = p.components + [f"function/{f}" for f in p.functions] + [f"preset/{n}" for n in p.presets]
            comps = ", ".join(listed) or "-"
            rows.append((p.name, p.distribution, p.version, p.status, comps))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        for p in registry.plugins:
            if p.error:
                print(f"\n{p.name}: {p.status}: {p.error}")
        for c in registry.conflicts:
            print(f"\nconflict: {c}")
    problems = registry.check(strict=strict_plugins(args))
    return EXIT_CONFIG if problems and strict_plugins(args) else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from collector.schema import config_schema

    text = json.dumps(config_schema(registry_from_args(args)), indent=2)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return EXIT_OK


def _version_text() -> str:
    """What ``collector version`` and ``collector --version`` print: the core, each plugin distribution
    (from entry-point metadata: no plugin is imported), and Python."""
    from importlib import metadata

    from collector import __version__

    lines = [f"collector-core {__version__}"]
    seen = set()
    for ep in metadata.entry_points(group="collector"):
        if ep.dist is not None and ep.dist.name not in seen:
            seen.add(ep.dist.name)
            lines.append(f"{ep.dist.name} {ep.dist.version}")
    lines.append(f"python {sys.version.split()[0]}")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """``--version``: computed only when asked (it reads entry-point metadata) and printed unwrapped."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        print(_version_text())
        parser.exit()


def cmd_version(args: argparse.Namespace) -> int:
    print(_version_text())
    return EXIT_OK


def cmd_dlq(args: argparse.Namespace) -> int:
    from collector.cli.dlq import run_dlq

    found = load_or_report(args)
    if found is None:
        return EXIT_CONFIG
    registry, loaded = found
    return run_dlq(args, loaded, registry)


def cmd_backfill(args: argparse.Namespace) -> int:
    import asyncio

    from collector.cli.backfill import run_backfill
    from collector.errors import ConfigError

    found = load_or_report(args)
    if found is None:
        return EXIT_CONFIG
    registry, loaded = found
    try:
        return asyncio.run(run_backfill(args, loaded, registry))
    except ConfigError as exc:  # --from/--to, or no pipeline uses the receiver
        print_config_error(exc)
        return EXIT_CONFIG


def cmd_map(args: argparse.Namespace) -> int:
    from collector.cli.map import run_map

    return run_map(args)


def cmd_queue(args: argparse.Namespace) -> int:
    from collector.cli.queue import run_queue
    from collector.cli.salvage import run_salvage

    actions: dict[str, Any] = {"list": run_queue, "drain": run_queue, "salvage": run_salvage}
    return int(actions[args.queue_command](args))


COMMANDS: dict[str, Any] = {
    "map": cmd_map,
    "backfill": cmd_backfill,
    "run": cmd_run,
    "validate": cmd_validate,
    "plugins": cmd_plugins,
    "schema": cmd_schema,
    "version": cmd_version,
    "examples": cmd_examples,
    "dlq": cmd_dlq,
    "queue": cmd_queue,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `collector schema | head`: not an error of ours
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
