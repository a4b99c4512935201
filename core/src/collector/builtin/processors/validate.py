"""The ``validate`` processor: OpenMeter's event rules and, optionally, a JSON Schema for ``data``.

The pipeline validates every event against OpenMeter's rules after its last
processor anyway, and rejects the whole batch when one fails.  This processor
does the same check earlier and under ``on_error``, so invalid records can be
dead-lettered or dropped while the rest go through; with ``data_schema`` it
also checks what each event carries in ``data``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Meta
from collector.errors import ConfigError
from collector.events import validate_event
from collector.mapping import FunctionMap

# Errors reported per record for the schema; a badly wrong record could otherwise produce hundreds.
MAX_SCHEMA_ERRORS = 10
_MAX_MESSAGE = 200


class ValidateConfig(ProcessorConfig):
    """Check each record against OpenMeter's CloudEvents rules and, optionally, a JSON Schema for `data`.

    Every problem of a record is reported with its field: the attribute name for
    OpenMeter's rules, `data.<path>` for the schema. `on_error` decides what
    happens to a record that fails.
    """

    cloudevents: bool = Field(
        True,
        description="Check OpenMeter's CloudEvents rules (specversion, id, source, type, subject, time, data, "
        "extension names). Turn off to check only `data_schema`.",
    )
    data_schema: Path | None = Field(
        None,
        description="A JSON Schema file (JSON, or YAML for .yaml/.yml) that `data` must satisfy; read once at "
        "start. A missing `data` is checked as null. Only references inside the file are resolved.",
    )

    @model_validator(mode="after")
    def _something_to_check(self) -> ValidateConfig:
        if not self.cloudevents and self.data_schema is None:
            raise ValueError("nothing to check: set data_schema or leave cloudevents on")
        return self

    def check_with_functions(self, functions: FunctionMap) -> None:
        if self.data_schema is not None:
            load_validator(self.data_schema, path="data_schema")


def load_validator(file: Path, *, path: str) -> Any:
    """A jsonschema validator for the schema in ``file``, compiled once; ConfigError if unusable."""
    import jsonschema  # lazily: only configurations with a data_schema pay for it

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the schema file {str(file)!r}: {exc.strerror or exc}", path) from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            schema = yaml.safe_load(text)
        else:
            schema = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"the schema file {str(file)!r} cannot be parsed: {exc}", path) from None
    if not isinstance(schema, dict | bool):
        raise ConfigError(f"the schema file {str(file)!r} must hold a JSON object (a JSON Schema)", path)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise ConfigError(
            f"the schema file {str(file)!r} is not a valid JSON Schema at {where}: {exc.message}", path
        ) from None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _field(error: Any) -> str:
    """``data.<path>`` of a schema error; for ``required``, the path of the missing property."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.validator_value, list):
        for name in error.validator_value:
            if error.message.startswith(repr(name)):
                parts.append(str(name))
                break
    return ".".join(["data", *parts])


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


class ValidateProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: ValidateConfig) -> None:
        super().__init__(ctx, config)
        self.validator: Any = None

    async def _start(self) -> None:
        if self.config.data_schema is not None:
            self.validator = load_validator(self.config.data_schema, path=f"processors.{self.id}.data_schema")

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        failures = Failures()
        rules = self.config.cloudevents
        validator = self.validator
        for i, record in enumerate(batch.events):
            if rules or not isinstance(record, dict):  # a non-object gets its one error either way
                for err in validate_event(record, i):
                    failures.add(i, record, err.message, err.field)
            if validator is not None and isinstance(record, dict):
                self._check_data(validator, i, record, failures)
        if not failures.errors:
            return batch
        await self.settle(failures)  # raises for on_error: reject
        bad = failures.failed_indexes
        keep = [i for i in range(len(batch.events)) if i not in bad]
        return Batch([batch.events[i] for i in keep], [batch.origins[i] for i in keep])

    def _check_data(self, validator: Any, i: int, record: dict[str, Any], failures: Failures) -> None:
        try:
            for n, error in enumerate(validator.iter_errors(record.get("data"))):
                if n == MAX_SCHEMA_ERRORS:
                    failures.add(i, record, f"data has more than {MAX_SCHEMA_ERRORS} schema errors", "data")
                    return
                where = _field(error)
                failures.add(i, record, _short(f"{where} does not match the data schema: {error.message}"), where)
        except Exception as exc:  # e.g. a $ref that cannot be resolved: the schema, not the record, is wrong
            failures.add(
                i, record, _short(f"the data schema could not be applied: {type(exc).__name__}: {exc}"), "data"
            )
