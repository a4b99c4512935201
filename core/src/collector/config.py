"""Configuration: YAML in the OpenTelemetry Collector's shape, validated by pydantic.

Loading happens in three steps, each with errors a person can act on:

1. YAML parsing (``file:line:column: problem``);
2. ``${VAR}`` / ``${VAR:-default}`` / ``${VAR:?message}`` substitution in string values (``$$`` is a
   literal ``$``); an unset variable without a default is an error naming it
   and where it is used.  Substitution happens on parsed string values rather
   than raw text, so a value containing ``:`` or ``#`` cannot break the YAML
   structure, and commented-out lines never demand variables;
3. validation: the top-level model, then each component's own model found
   through the registry, each error rendered as ``path: message``.

Top-level settings can also come from ``COLLECTOR_*`` environment variables
(:class:`Settings`), one variable per setting, named after the field
(``storage_directory`` is ``COLLECTOR_STORAGE_DIRECTORY``); precedence is
command-line flag, then environment, then file, then default
(docs/configuration.md#environment-settings).  Durations and sizes use one
syntax everywhere (:mod:`collector.durations`); log levels and formats are
case-insensitive, because environment variables are often written ``INFO``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from collector.durations import Duration
from collector.endpoints import parse_endpoint
from collector.errors import ConfigError
from collector.mapping import registry_functions
from collector.plugins import Registry
from collector.specs import SECTION, ComponentID, ComponentKind, ComponentSpec

# ${VAR}, ${VAR:-default}, and ${VAR:?message} (POSIX: unset or empty is an error carrying the message).
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}")


class ConfigErrors(ConfigError):
    """Several configuration problems at once, one ``path: message`` per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class _AnyCase:
    """A choice read case-insensitively, with extra spellings (``warn``).

    Its JSON Schema offers the lower-case names (for completion) or any
    spelling of a name or alias, since JSON Schema has no case-insensitive flag.
    """

    aliases: tuple[tuple[str, str], ...] = ()

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        lowered = value.strip().lower()
        return dict(self.aliases).get(lowered, lowered)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        choices = handler(schema)
        words = [str(v) for v in choices.get("enum", [])] + [alias for alias, _ in self.aliases]
        spelled = "|".join(
            "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in w) for w in words
        )
        return {"anyOf": [choices, {"type": "string", "pattern": f"^\\s*(?:{spelled})\\s*$"}]}


_LEVEL = _AnyCase(aliases=(("warn", "warning"),))
_FORMAT = _AnyCase()
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_LEVEL), _LEVEL]
LogFormat = Annotated[Literal["auto", "json", "text"], BeforeValidator(_FORMAT), _FORMAT]


class OtlpTelemetryConfig(_Strict):
    """The collector's own metrics and logs pushed over OTLP/HTTP protobuf (docs/operations.md); needs the
    ``collector-core[otel]`` extra (opentelemetry-proto)."""

    endpoint: str = Field(
        description="OTLP/HTTP base URL (http:// or https://); /v1/metrics and /v1/logs are appended."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description='Headers of every push, e.g. authorization: "Bearer ${OTEL_TOKEN}".'
    )
    interval: Duration = Field(30.0, gt=0, description="How often the metrics are pushed (30s, 1m).")
    timeout: Duration = Field(10.0, gt=0, description="Longest wait for one push; a slower one counts as failed.")
    metrics: bool = Field(True, description="Push the metrics that /metrics serves.")
    logs: bool = Field(True, description="Push the log records at logs_level or above (within log_level).")
    logs_level: LogLevel = Field("info", description="Lowest level of the log records pushed.")
    log_queue_size: int = Field(
        2048, gt=0, description="Log records waiting to be pushed; beyond it new ones are dropped and counted."
    )

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("an http:// or https:// URL, e.g. http://127.0.0.1:4318")
        return v

    @model_validator(mode="after")
    def _proto_installed(self) -> OtlpTelemetryConfig:
        try:
            import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2  # noqa: F401
        except ImportError:
            raise PydanticCustomError(
                "missing_extra", "needs opentelemetry-proto: pip install 'collector-core[otel]'"
            ) from None
        return self


class TelemetryConfig(_Strict):
    """The admin server and the logs."""

    endpoint: str | None = Field(
        "127.0.0.1:4195",
        description="host:port of the admin server (/metrics, /ping, /ready, /health); "
        "null disables it. Use 0.0.0.0:4195 in containers.",
    )
    log_level: LogLevel = Field("info", description="Log level: debug, info, warning or error (any case).")
    log_format: LogFormat = Field("auto", description="json, text, or auto: text on a terminal, JSON otherwise.")
    otlp: OtlpTelemetryConfig | None = Field(None, description="Push own metrics and logs over OTLP (optional).")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v)
        return v


class PipelineConfig(_Strict):
    """One pipeline: receivers feed processors in order, then every exporter."""

    receivers: list[str] = Field(default_factory=list, description="Receiver ids feeding this pipeline.")
    processors: list[str] = Field(default_factory=list, description="Processor ids, applied in order.")
    exporters: list[str] = Field(default_factory=list, description="Exporter ids; each gets its own queue.")


class ServiceConfig(_Strict):
    """Which components run, and how they are wired."""

    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Admin server and logs.")
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict, description="Named pipelines.")
    coordinator: str | None = Field(
        None, description="Coordinator id (from `coordinators`) deciding leadership; default local."
    )
    drain_timeout: Duration = Field(
        30.0, gt=0, description="How long a graceful stop may take (receivers, then senders): 30s, 2m or seconds."
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="Processes that serve the push receivers (http, otlp): N, or auto for one per CPU. With more "
        "than 1, each worker listens on the same ports (SO_REUSEPORT) and commits to its own queue shard; pull "
        "receivers run once, in the primary process (docs/operations.md, Worker processes).",
    )

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError("workers must be between 1 and 256, or auto")
        return v

    def worker_count(self) -> int:
        """``workers`` as a number: ``auto`` is the CPUs this process may use."""
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        return self.workers


class StorageConfig(_Strict):
    """Where queues, dead letters and watermarks live."""

    directory: Path = Field(
        Path("data"), description="Directory for queues, dead letters and state; a persistent volume."
    )


class CollectorConfig(_Strict):
    """The whole configuration file.  Component sections hold raw mappings here;
    each is validated by its own model in :func:`validate_components`."""

    receivers: dict[str, dict[str, Any] | None] = Field(default_factory=dict, description="Receivers by id.")
    processors: dict[str, dict[str, Any] | None] = Field(default_factory=dict, description="Processors by id.")
    exporters: dict[str, dict[str, Any] | None] = Field(default_factory=dict, description="Exporters by id.")
    coordinators: dict[str, dict[str, Any] | None] = Field(default_factory=dict, description="Coordinators by id.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Storage.")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Service wiring.")


# Variables that once named a setting, and the one that names it now.  Setting
# an old one is an error rather than silently ignored.
RETIRED_VARIABLES = {"COLLECTOR_STORAGE": "COLLECTOR_STORAGE_DIRECTORY"}


class Settings(BaseSettings):
    """Top-level settings from ``COLLECTOR_*`` environment variables."""

    # An empty variable counts as unset (``COLLECTOR_CONFIG=`` in a compose file).
    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="ignore", env_ignore_empty=True)

    config: Path | None = Field(None, description="Configuration file (COLLECTOR_CONFIG).")
    preset: str | None = Field(None, description="Preset name (COLLECTOR_PRESET).")
    log_level: LogLevel | None = Field(None, description="Overrides service.telemetry.log_level (any case).")
    log_format: LogFormat | None = Field(None, description="Overrides service.telemetry.log_format (any case).")
    admin_endpoint: str | None = Field(None, description="Overrides service.telemetry.endpoint.")
    storage_directory: Path | None = Field(None, description="Overrides storage.directory.")
    drain_timeout: Duration | None = Field(None, gt=0, description="Overrides service.drain_timeout (30s, 2m).")
    workers: int | Literal["auto"] | None = Field(None, description="Overrides service.workers (N or auto).")
    event_loop: Literal["auto", "asyncio", "uvloop"] | None = Field(
        None, description="The event loop of `collector run`: auto (uvloop when installed), asyncio or uvloop."
    )
    gil_switch_ms: float | None = Field(
        None,
        gt=0,
        le=100,
        description="How long a thread of `collector run` may wait for Python's GIL, in milliseconds (default 0.5; "
        "collector.interpreter).",
    )

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str | None) -> int | str | None:
        return None if v is None else ServiceConfig._workers(v)

    @model_validator(mode="before")
    @classmethod
    def _one_variable_per_setting(cls, data: Any) -> Any:
        for old, new in RETIRED_VARIABLES.items():
            if os.environ.get(old):
                raise PydanticCustomError("retired_variable", f"{old} is not read any more: set {new} instead")
        return data

    def apply(self, config: CollectorConfig) -> CollectorConfig:
        tel = config.service.telemetry
        updates_tel: dict[str, Any] = {}
        if self.log_level:
            updates_tel["log_level"] = self.log_level
        if self.log_format:
            updates_tel["log_format"] = self.log_format
        if self.admin_endpoint is not None:
            parse_endpoint(self.admin_endpoint)
            updates_tel["endpoint"] = self.admin_endpoint
        service_updates: dict[str, Any] = {"telemetry": tel.model_copy(update=updates_tel)}
        if self.drain_timeout:
            service_updates["drain_timeout"] = self.drain_timeout
        if self.workers is not None:
            service_updates["workers"] = self.workers
        updates: dict[str, Any] = {"service": config.service.model_copy(update=service_updates)}
        if self.storage_directory:
            updates["storage"] = StorageConfig(directory=self.storage_directory)
        return config.model_copy(update=updates)


# -- loading ------------------------------------------------------------------


def parse_yaml(text: str, source: str = "<config>") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, not {type(data).__name__}", source)
    return data


def substitute(data: Any, environ: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` in every string value."""
    env = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {k: substitute(v, env, f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute(v, env, f"{path}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "$" not in data:
        return data

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == "?":  # docs/configuration.md: a required, non-empty value (e.g. an API token)
            if not value:
                message = default or "a value is required"
                raise ConfigError(f"environment variable {name} is not set: {message}", path or None)
            return value
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(
                    f"environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                    path or None,
                )
            return default
        return value

    return _VAR.sub(repl, data)


def _pydantic_errors(exc: ValidationError, prefix: str) -> list[ConfigError]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; `collector schema` lists the fields)"
        out.append(ConfigError(message, path))
    return out


@dataclass
class ComponentConfig:
    id: str
    kind: ComponentKind
    type: str
    config: BaseModel


@dataclass
class LoadedConfig:
    """A fully validated configuration, ready for the service."""

    raw: CollectorConfig
    components: dict[tuple[str, str], ComponentConfig]  # (kind, id) -> config
    warnings: list[str] = field(default_factory=list)
    source: str = "<config>"
    #: the YAML it was loaded from, before ${VAR} substitution: worker processes load the same
    #: text with the same environment, so they run exactly the configuration the primary runs
    text: str = ""

    def get(self, kind: str, cid: str) -> ComponentConfig:
        return self.components[(kind, cid)]

    def secrets(self) -> set[str]:
        found: set[str] = set()
        for c in self.components.values():
            found |= collect_secrets(c.config)
        return found


def collect_secrets(value: Any) -> set[str]:
    """Every SecretStr value inside a model, so the log redactor can mask it."""
    found: set[str] = set()
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if secret:
            found.add(secret)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found |= collect_secrets(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            found |= collect_secrets(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= collect_secrets(v)
    return found


def validate_components(raw: CollectorConfig, registry: Registry) -> LoadedConfig:
    errors: list[ConfigError] = []
    warnings: list[str] = []
    components: dict[tuple[str, str], ComponentConfig] = {}
    functions = registry_functions(registry)

    for kind, section in SECTION.items():
        entries: dict[str, Any] = getattr(raw, section)
        for cid, body in entries.items():
            path = f"{section}.{cid}"
            try:
                type_name = ComponentID.parse(cid).type
            except ValueError as exc:
                errors.append(ConfigError(str(exc), path))
                continue
            try:
                spec = registry.component(kind, type_name, path=path)  # type: ignore[arg-type]
            except ConfigError as exc:
                errors.append(exc)
                continue
            try:
                model = spec.config_model.model_validate(body or {})
            except ValidationError as exc:
                errors.extend(_pydantic_errors(exc, path))
                continue
            check = getattr(model, "check_with_functions", None)
            if callable(check):
                # Checks a model cannot do alone, e.g. compiling a mapping against
                # the functions that plugins registered (collector.mapping.FunctionMap).
                try:
                    check(functions)
                except ConfigError as exc:
                    errors.append(ConfigError(exc.message, f"{path}.{exc.path}" if exc.path else path))
                    continue
            components[(kind, cid)] = ComponentConfig(cid, kind, type_name, model)  # type: ignore[arg-type]

    errors.extend(_check_pipelines(raw, warnings))
    errors.extend(_check_workers(raw, registry, components, warnings))
    if errors:
        raise ConfigErrors(errors)
    return LoadedConfig(raw=raw, components=components, warnings=warnings)


def _check_workers(
    raw: CollectorConfig,
    registry: Registry,
    components: dict[tuple[str, str], ComponentConfig],
    warnings: list[str],
) -> Iterator[ConfigError]:
    """With several worker processes, every component of a pipeline they run must be worker-safe.

    A receiver of a worker-safe type whose configuration needs one process runs once, in the
    primary: that is said in ``warnings`` (the user asked for workers and this receiver will not use them).
    """
    if raw.service.worker_count() <= 1:
        return
    sections = {"receiver": raw.receivers, "processor": raw.processors, "exporter": raw.exporters}

    def spec_of(kind: str, cid: str) -> ComponentSpec | None:
        if cid not in sections[kind] or (kind, cid) not in components:
            return None  # reported by _check_pipelines or validate_components
        try:
            return registry.component(kind, ComponentID.parse(cid).type)  # type: ignore[arg-type]
        except (ConfigError, ValueError):
            return None  # reported by validate_components

    def reason(kind: str, cid: str) -> str | None:
        spec = spec_of(kind, cid)
        return None if spec is None else spec.single_process_reason(components[(kind, cid)].config)

    in_workers: set[str] = set()
    for rid in raw.receivers:
        why = reason("receiver", rid)
        if why is None:
            in_workers.add(rid)
            continue
        spec = spec_of("receiver", rid)
        if spec is not None and spec.worker_safe:  # a push receiver held to one process by its settings
            warnings.append(
                f"receivers.{rid} runs in the primary process only, not in the {raw.service.worker_count()} "
                f"workers: {why}"
            )

    for name, pipe in raw.service.pipelines.items():
        if not any(rid in in_workers for rid in pipe.receivers):
            continue  # no receiver that workers run: it runs once, in the primary process
        for section, kind in (("processors", "processor"), ("exporters", "exporter")):
            for cid in getattr(pipe, section):
                if reason(kind, cid) is not None:
                    yield ConfigError(
                        f"{kind} {cid!r} keeps state that one process must own, but worker processes run this "
                        f"pipeline (service.workers: {raw.service.workers}); use workers: 1, or move {cid!r} to a "
                        "pipeline fed only by pull receivers (docs/operations.md, Worker processes)",
                        f"service.pipelines.{name}.{section}",
                    )


def _check_pipelines(raw: CollectorConfig, warnings: list[str]) -> Iterator[ConfigError]:
    pipelines = raw.service.pipelines
    if not pipelines:
        yield ConfigError("no pipelines: add at least one under service.pipelines", "service.pipelines")
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipe in pipelines.items():
        path = f"service.pipelines.{name}"
        if not pipe.receivers:
            yield ConfigError("a pipeline needs at least one receiver", f"{path}.receivers")
        if not pipe.exporters:
            yield ConfigError("a pipeline needs at least one exporter", f"{path}.exporters")
        for section in ("receivers", "processors", "exporters"):
            ids: list[str] = getattr(pipe, section)
            declared = getattr(raw, section)
            seen: set[str] = set()
            for i, cid in enumerate(ids):
                if cid in seen:
                    yield ConfigError(f"{cid!r} is listed twice", f"{path}.{section}[{i}]")
                seen.add(cid)
                if cid not in declared:
                    known = ", ".join(sorted(declared)) or "none"
                    yield ConfigError(
                        f"{cid!r} is not defined under `{section}` (defined: {known})",
                        f"{path}.{section}[{i}]",
                    )
                used[section].add(cid)
    for section, used_ids in used.items():
        for cid in sorted(set(getattr(raw, section)) - used_ids):
            warnings.append(f"{section}.{cid} is defined but no pipeline uses it; it will not run")
    coord = raw.service.coordinator
    if coord is not None and coord not in raw.coordinators:
        yield ConfigError(f"{coord!r} is not defined under `coordinators`", "service.coordinator")


def load_config(
    text: str,
    registry: Registry,
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> LoadedConfig:
    """Parse, substitute, validate.  Raises ConfigError / ConfigErrors."""
    data = substitute(parse_yaml(text, source), environ)
    try:
        raw = CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(_pydantic_errors(exc, "")) from None
    if settings is not None:
        try:
            raw = settings.apply(raw)
        except ValueError as exc:
            raise ConfigError(str(exc), "COLLECTOR_ADMIN_ENDPOINT") from None
    loaded = validate_components(raw, registry)
    loaded.source = source
    loaded.text = text
    return loaded


def load_config_file(path: Path, registry: Registry, **kwargs: Any) -> LoadedConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", str(path)) from None
    return load_config(text, registry, source=str(path), **kwargs)
