"""``collector map``: try a mapping or a pipeline's processors on sample input.

Input is a JSON object, a JSON array of records, or newline-delimited JSON,
from a file or stdin.  Output is one JSON line per resulting record on
stdout; problems go to stderr with the record index and, for compile errors,
the line and column inside the expression.

Exit codes: 0 all records mapped, 1 some records failed, 2 the expression or
configuration does not compile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from collector.errors import PermanentError

if TYPE_CHECKING:
    from collector.components import Meta


def read_records(data: bytes) -> list[Any]:
    """A JSON value (object or array) or newline-delimited JSON, as the raw HTTP intake reads it."""
    from collector.builtin.http.intake import IntakeError, parse_records

    if not data.strip():
        return []
    try:
        return parse_records(data, "application/json")
    except IntakeError as exc:
        raise ValueError(f"input: {exc.detail}") from None


def _print(record: Any) -> None:
    sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")


def run_expression(expression: str, records: list[Any], meta: Meta, registry: Any) -> int:
    from collector.mapping import MappingCompileError, compile_expression, registry_functions

    try:
        mapping = compile_expression(expression, registry_functions(registry), path="--expression")
    except MappingCompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for i, record in enumerate(records):
        try:
            result = mapping(record, meta)
        except Exception as exc:
            failed += 1
            print(f"record {i}: {type(exc).__name__}: {exc} (expression: {mapping.snippet()})", file=sys.stderr)
            continue
        if result is None:
            print(f"record {i}: dropped (the mapping returned None)", file=sys.stderr)
        else:
            _print(result)
    return 1 if failed else 0


async def run_pipeline_processors(
    loaded: Any, registry: Any, pipeline: str, records: list[Any], meta: Meta, validate: bool
) -> int:
    """Build the pipeline's processors on a throw-away storage directory and run them.

    The output is checked against the event rules of the pipeline's exporters
    (built, not started), as ``collector run`` would check it; ``validate``
    False checks nothing.
    """
    from collector.events import EventRules, strictest
    from collector.runtime.layout import StorageLayout
    from collector.runtime.pipeline import Pipeline
    from collector.runtime.service import Service

    pipes = loaded.raw.service.pipelines
    if pipeline not in pipes:
        print(f"error: no pipeline {pipeline!r} (have: {', '.join(pipes)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="collector-map-") as tmp:
        service = Service(loaded, registry, layout=StorageLayout(Path(tmp)))
        processors = service.build_processors(pipeline)
        rules: tuple[EventRules, ...] = ()
        if validate:
            exporters = [service.build_exporter(eid) for eid in pipes[pipeline].exporters]
            rules = strictest(r for exporter in exporters for r in exporter.requires)
        for proc in processors:
            await proc.start()
        try:
            pipe = Pipeline(pipeline, processors, [], rules=rules)
            if meta.receiver is None:
                meta = replace(meta, receiver="collector-map")
            try:
                out = await pipe.prepare(list(records), meta)
            except PermanentError as exc:
                for err in exc.records:
                    where = f" field {err.field!r}" if err.field else ""
                    print(f"record {err.index}{where}: {err.message}", file=sys.stderr)
                if not exc.records:
                    print(f"error: {exc.message}", file=sys.stderr)
                return 1
        finally:
            for proc in processors:
                await proc.shutdown(2.0)
    for record in out:
        _print(record)
    return 0


def run_map(args: argparse.Namespace) -> int:
    from collector.cli.common import load_or_report, registry_from_args

    source = args.input
    data = sys.stdin.buffer.read() if source in (None, "-") else Path(source).read_bytes()
    try:
        records = read_records(data)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        given = orjson.loads(args.meta) if args.meta else {}
    except orjson.JSONDecodeError as exc:
        print(f"error: --meta is not JSON: {exc}", file=sys.stderr)
        return 2
    from collector.components import Meta

    if not isinstance(given, dict):
        print("error: --meta must be a JSON object", file=sys.stderr)
        return 2
    meta = Meta.of(given)
    if args.expression is not None:
        return run_expression(args.expression, records, meta, registry_from_args(args))
    found = load_or_report(args)
    if found is None:
        return 2
    registry, loaded = found
    pipelines = list(loaded.raw.service.pipelines)
    name = args.pipeline or (pipelines[0] if len(pipelines) == 1 else None)
    if name is None:
        print(f"error: say which pipeline with --pipeline (have: {', '.join(pipelines)})", file=sys.stderr)
        return 2
    return asyncio.run(run_pipeline_processors(loaded, registry, name, records, meta, not args.no_validate))
