"""Durations and sizes: one syntax for every configured time and byte count.

The parsers, the pydantic types built on them (constraints apply to the parsed
value), and the JSON Schema that ``collector schema`` prints: it must accept
what the loader accepts, including ``${VAR:-default}`` strings that only
become numbers after substitution.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from collector.config import load_config
from collector.durations import ByteSize, Duration, format_duration, parse_duration, parse_size
from collector.plugins import PluginSelection, load_registry
from collector.schema import allow_substitution, config_schema
from collector.testing import testing_registry


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        ("PT1H", 3600.0),
        ("P1DT30M", 88200.0),
        ("PT0.5S", 0.5),
        ("90", 90.0),
        (" 45s ", 45.0),
        ("0", 0.0),
        (12, 12.0),
        (2.5, 2.5),
        (timedelta(minutes=2), 120.0),
        (None, None),
    ],
)
def test_parse_duration(text: Any, seconds: float | None) -> None:
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("soon", "not a duration: 'soon'"),
        ("", "not a duration: ''"),
        ("30 s", "not a duration"),
        ("1h 30m", "not a duration"),
        ("30S", "not a duration"),
        ("m5", "not a duration"),
        ("P", "not an ISO 8601 duration"),
        ("PT1X", "not an ISO 8601 duration"),
    ],
)
def test_parse_duration_refuses_with_the_forms_to_use(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GiB", 1 << 30),
        ("512MiB", 512 << 20),
        ("10MB", 10_000_000),
        ("1.5KiB", 1536),
        ("64kB", 64_000),
        ("64KB", 64_000),
        ("2TiB", 2 << 40),
        ("1TB", 10**12),
        ("512Mi", 512 << 20),
        ("1gib", 1 << 30),
        ("100B", 100),
        ("1 GiB", 1 << 30),
        ("4096", 4096),
        ("0", 0),
        (4096, 4096),
        (2048.0, 2048),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        (None, None),
    ],
)
def test_parse_size(text: Any, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1 parsec", "unknown size unit 'parsec'"),
        ("1XB", "unknown size unit 'XB'"),
        ("GiB", "not a size: 'GiB'"),
        ("lots", "not a size"),
        ("1.5B", "not a whole number of bytes"),
        (0.5, "not a whole number of bytes"),
        (True, "not a boolean"),
    ],
)
def test_parse_size_refuses_with_the_units_to_use(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(value)


@pytest.mark.parametrize("seconds", [0.0, 0.2, 1.5, 60.0, 90.0, 5400.0, 86400.0, 7 * 86400.0, 0.0005, 12.25])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_is_what_a_person_writes() -> None:
    assert [format_duration(s) for s in (0.2, 60, 90, 5400, 86400, 1.5)] == [
        "200ms",
        "1m",
        "1m30s",
        "1h30m",
        "1d",
        "1.5s",
    ]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: Duration = Field(10.0, gt=0)
    lateness: Duration = Field(0.0, ge=0)
    ttl: Duration | None = Field(None, gt=0)
    max_bytes: ByteSize = Field(1024, gt=0, le=1 << 30)


def test_types_parse_every_form_into_seconds_and_bytes() -> None:
    limits = Limits(timeout="1m", lateness="500ms", ttl="30d", max_bytes="512MiB")
    assert (limits.timeout, limits.lateness, limits.ttl, limits.max_bytes) == (60.0, 0.5, 2592000.0, 512 << 20)
    assert Limits(timeout=5, max_bytes=100).timeout == 5.0
    assert Limits(timeout="5", max_bytes="100").max_bytes == 100
    assert Limits().ttl is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timeout": "0s"}, "greater than 0"),
        ({"timeout": -1}, "greater than 0"),
        ({"lateness": "-5"}, "greater than or equal to 0"),
        ({"ttl": "0ms"}, "greater than 0"),
        ({"max_bytes": "2GiB"}, "less than or equal to 1073741824"),
        ({"max_bytes": "0B"}, "greater than 0"),
        ({"timeout": "soon"}, "not a duration: 'soon'"),
        ({"timeout": True}, "not a boolean"),
        ({"timeout": float("inf")}, "finite"),
        ({"timeout": [1]}, "valid number"),
        ({"max_bytes": "4 parsecs"}, "unknown size unit"),
    ],
)
def test_constraints_apply_to_the_parsed_value(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Limits(**fields)


# -- the JSON Schema of `collector schema` ------------------------------------------


def _config(exporter: dict[str, Any], receiver: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "receivers": {"http": {"endpoint": "127.0.0.1:8080", **(receiver or {})}},
        "exporters": {"openmeter": {"url": "https://openmeter.cloud", **exporter}},
        "service": {"pipelines": {"events": {"receivers": ["http"], "exporters": ["openmeter"]}}},
    }


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return config_schema(testing_registry())


WRITTEN_AS_PEOPLE_DO = [
    {"timeout": "30s", "retry": {"max_interval": "1m", "initial_interval": "500ms"}},
    {"queue": {"max_bytes": "1GiB", "max_age": "7d", "min_free_bytes": "64MiB"}},
    {"batch": {"max_events": "${BATCH_SIZE:-100}", "max_bytes": "1MiB", "period": "200ms"}},
    {"timeout": "${EXPORT_TIMEOUT:-10s}", "queue": {"max_bytes": "${QUEUE_BYTES:-512MiB}"}},
    {"max_in_flight": "${IN_FLIGHT}", "insecure_skip_verify": "${SKIP_VERIFY:-false}"},
    {"queue": {"kind": "${QUEUE_KIND:-durable}", "commit_wait_ms": "${WAIT_MS:-2}"}},
    {"timeout": 30, "queue": {"max_bytes": 1073741824}},
]


@pytest.mark.parametrize("exporter", WRITTEN_AS_PEOPLE_DO)
def test_schema_accepts_what_the_loader_accepts(schema: dict[str, Any], exporter: dict[str, Any]) -> None:
    config = _config(exporter, {"read_timeout": "1m", "max_body_bytes": "8MiB"})
    jsonschema.validate(config, schema)
    loaded = load_config(yaml.safe_dump(config), testing_registry(), environ={"IN_FLIGHT": "8"})
    assert loaded.get("exporter", "openmeter").config.timeout > 0


@pytest.mark.parametrize(
    "exporter",
    [
        {"timeout": "soon"},
        {"timeout": "30 seconds"},
        {"timeout": 0},
        {"queue": {"max_bytes": "1 parsec"}},
        {"batch": {"max_events": "many"}},
        {"batch": {"max_events": "$BATCH_SIZE"}},
        {"max_in_flight": 0},
        {"queue": {"kind": "disk"}},
    ],
)
def test_schema_still_refuses_what_the_loader_refuses(schema: dict[str, Any], exporter: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_config(exporter), schema)


def test_schema_of_a_model_keeps_its_constraints_in_json_schema_terms() -> None:
    """pydantic writes a constraint it cannot place (an optional duration's ``gt``)
    under its Python name; the schema must say ``exclusiveMinimum`` so that it is enforced."""
    schema = allow_substitution(Limits.model_json_schema())
    ttl = json.dumps(schema["properties"]["ttl"])
    assert '"exclusiveMinimum": 0' in ttl and '"gt"' not in ttl
    for good in ({"ttl": "30d"}, {"ttl": 60}, {"ttl": None}, {"ttl": "${TTL:-30d}"}, {"lateness": 0}):
        jsonschema.validate(good, schema)
    for bad in ({"ttl": 0}, {"timeout": 0}, {"lateness": -1}, {"max_bytes": 2 << 30}, {"ttl": "a month"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "core" / "src" / "collector" / "examples").glob("*.yaml")) + sorted(
    (ROOT / "core/src/collector/presets").glob("*.yaml")
)


@pytest.fixture(scope="module")
def installed_schema() -> dict[str, Any]:
    """The schema with every installed plugin, as `collector schema` prints it."""
    return config_schema(load_registry(PluginSelection.from_env()))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_configuration_validates_against_the_schema(installed_schema: dict[str, Any], path: Path) -> None:
    """What `collector schema` gives an editor must not flag a file the collector runs."""
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), installed_schema)
