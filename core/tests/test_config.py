"""Configuration: substitution, validation messages, pipeline checks, secrets."""

from __future__ import annotations

import pytest

from collector.config import ConfigErrors, Settings, load_config, substitute
from collector.errors import ConfigError
from collector.testing import testing_registry

BASE = """
receivers:
  http: {endpoint: "127.0.0.1:0"}
exporters:
  debug: {}
service:
  pipelines:
    events: {receivers: [http], exporters: [debug]}
"""


@pytest.fixture
def registry():
    return testing_registry()


def errors_of(text: str, registry, **kw) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(text, registry, **kw)
    err = exc.value
    return err.lines() if isinstance(err, ConfigErrors) else [str(err)]


def test_minimal_config_loads(registry):
    loaded = load_config(BASE, registry)
    assert loaded.get("receiver", "http").config.endpoint == "127.0.0.1:0"
    assert loaded.warnings == []


def test_substitution_with_default_and_escape():
    env = {"HOST": "10.0.0.1", "EMPTY": ""}
    data = {"a": "${HOST}:${PORT:-8080}", "b": ["$${HOST}", "${EMPTY:-fallback}"], "c": 5}
    assert substitute(data, env) == {"a": "10.0.0.1:8080", "b": ["${HOST}", "fallback"], "c": 5}


def test_unset_variable_without_default_names_it_and_its_place(registry):
    text = BASE.replace("debug: {}", "openmeter: {url: '${OM_URL}'}").replace("[debug]", "[openmeter]")
    assert errors_of(text, registry, environ={}) == [
        "exporters.openmeter.url: environment variable OM_URL is not set (use ${OM_URL:-default} for a default)"
    ]


def test_variables_in_comments_are_ignored(registry):
    load_config(BASE + "# token: ${NOT_SET}\n", registry, environ={})


def test_unknown_field_is_reported_with_its_path(registry):
    text = BASE.replace('endpoint: "127.0.0.1:0"', 'endpoint: "127.0.0.1:0", endpiont: x')
    assert errors_of(text, registry) == [
        "receivers.http.endpiont: unknown field (check the spelling; `collector schema` lists the fields)"
    ]


def test_wrong_type_and_bad_value(registry):
    text = BASE.replace('endpoint: "127.0.0.1:0"', 'endpoint: "nonsense", max_body_bytes: -1')
    assert errors_of(text, registry) == [
        "receivers.http.endpoint: Value error, 'nonsense' is not host:port (for example 127.0.0.1:8080)",
        "receivers.http.max_body_bytes: Input should be greater than 0",
    ]


def test_invalid_yaml_gives_line_and_column(registry):
    [line] = errors_of("receivers:\n  http: {endpoint: [\n", registry, source="c.yaml")
    assert line.startswith("c.yaml:3:1: invalid YAML:")


def test_top_level_must_be_a_mapping(registry):
    assert errors_of("- a\n- b\n", registry) == ["<config>: the top level must be a mapping, not list"]


def test_unknown_top_level_section(registry):
    assert errors_of(BASE + "extensions: {}\n", registry) == [
        "extensions: unknown field (check the spelling; `collector schema` lists the fields)"
    ]


def test_invalid_component_id(registry):
    text = BASE.replace("http: {", "HTTP: {").replace("[http]", "[HTTP]")
    assert any(
        e.startswith("receivers.HTTP: 'HTTP' is not a component id: write `type`") for e in errors_of(text, registry)
    )


def test_pipeline_naming_undefined_component(registry):
    text = BASE.replace("exporters: [debug]", "exporters: [debug, openmeter/eu]")
    assert errors_of(text, registry) == [
        "service.pipelines.events.exporters[1]: 'openmeter/eu' is not defined under `exporters` (defined: debug)"
    ]


def test_pipeline_without_receiver_or_exporter(registry):
    text = BASE.replace("{receivers: [http], exporters: [debug]}", "{receivers: [], exporters: []}")
    assert errors_of(text, registry) == [
        "service.pipelines.events.receivers: a pipeline needs at least one receiver",
        "service.pipelines.events.exporters: a pipeline needs at least one exporter",
    ]


def test_no_pipelines(registry):
    assert errors_of("receivers: {}\n", registry) == [
        "service.pipelines: no pipelines: add at least one under service.pipelines"
    ]


def test_unused_component_is_a_warning(registry):
    text = BASE.replace("debug: {}", "debug: {}\n  debug/spare: {}")
    loaded = load_config(text, registry)
    assert loaded.warnings == ["exporters.debug/spare is defined but no pipeline uses it; it will not run"]


def test_several_errors_are_all_reported(registry):
    text = BASE.replace('endpoint: "127.0.0.1:0"', "bogus: 1").replace("debug: {}", "debug: {verbosity: loud}")
    lines = errors_of(text, registry)
    assert len(lines) == 2
    assert lines[0].startswith("receivers.http.bogus: unknown field")
    assert lines[1].startswith("exporters.debug.verbosity: Input should be 'basic' or 'detailed'")


def test_secrets_are_secretstr_and_never_rendered(registry):
    text = BASE.replace("debug: {}", "openmeter: {url: 'http://127.0.0.1:1', token: '${TOK}'}").replace(
        "[debug]", "[openmeter]"
    )
    loaded = load_config(text, registry, environ={"TOK": "s3cr3t-token-value"})
    cfg = loaded.get("exporter", "openmeter").config
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in cfg.model_dump_json()
    assert loaded.secrets() == {"s3cr3t-token-value"}


def test_settings_from_environment_override_the_file(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", "debug")
    monkeypatch.setenv("COLLECTOR_STORAGE_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("COLLECTOR_ADMIN_ENDPOINT", "127.0.0.1:9999")
    loaded = load_config(BASE, registry, settings=Settings())
    assert loaded.raw.service.telemetry.log_level == "debug"
    assert loaded.raw.service.telemetry.endpoint == "127.0.0.1:9999"
    assert loaded.raw.storage.directory == tmp_path


def test_bad_setting_from_environment_is_a_config_error(registry, monkeypatch):
    monkeypatch.setenv("COLLECTOR_ADMIN_ENDPOINT", "nope")
    with pytest.raises(ConfigError, match="COLLECTOR_ADMIN_ENDPOINT: 'nope' is not host:port"):
        load_config(BASE, registry, settings=Settings())


def test_durations_and_sizes_are_read_in_every_section(registry):
    text = BASE.replace(
        "debug: {}", "debug: {timeout: 1m, queue: {max_bytes: 1GiB, max_age: 12h}, batch: {period: 200ms}}"
    )
    text = text.replace('http: {endpoint: "127.0.0.1:0"}', 'http: {endpoint: "127.0.0.1:0", max_body_bytes: 8MiB}')
    loaded = load_config(text + "  drain_timeout: 1m30s\n", registry)
    debug = loaded.get("exporter", "debug").config
    assert (debug.timeout, debug.queue.max_bytes, debug.queue.max_age, debug.batch.period) == (
        60.0,
        1 << 30,
        43200.0,
        0.2,
    )
    assert loaded.get("receiver", "http").config.max_body_bytes == 8 << 20
    assert loaded.raw.service.drain_timeout == 90.0


def test_substituted_durations_and_sizes(registry):
    text = BASE.replace("debug: {}", 'debug: {timeout: "${T:-30s}", batch: {max_events: "${BATCH_SIZE:-100}"}}')
    loaded = load_config(text, registry, environ={"T": "2m"})
    assert loaded.get("exporter", "debug").config.timeout == 120.0
    assert loaded.get("exporter", "debug").config.batch.max_events == 100
    assert errors_of(text, registry, environ={"T": "soon"}) == [
        "exporters.debug.timeout: Value error, not a duration: 'soon' (use forms like 1h30m, 500ms, PT1H)"
    ]


def test_a_size_with_an_unknown_unit_names_the_units(registry):
    text = BASE.replace("debug: {}", "debug: {queue: {max_bytes: 1GB2}}")
    [line] = errors_of(text, registry)
    assert line.startswith("exporters.debug.queue.max_bytes: Value error, not a size: '1GB2'")


@pytest.mark.parametrize(
    ("written", "level"), [("INFO", "info"), ("Warning", "warning"), ("WARN", "warning"), ("debug", "debug")]
)
def test_log_levels_are_case_insensitive_in_the_file_and_the_environment(registry, monkeypatch, written, level):
    text = BASE + f"  telemetry: {{log_level: {written}, log_format: JSON}}\n"
    telemetry = load_config(text, registry).raw.service.telemetry
    assert (telemetry.log_level, telemetry.log_format) == (level, "json")
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", written)
    assert load_config(BASE, registry, settings=Settings()).raw.service.telemetry.log_level == level


def test_a_misspelt_log_level_is_still_refused(registry):
    [line] = errors_of(BASE + "  telemetry: {log_level: verbose}\n", registry)
    assert line == "service.telemetry.log_level: Input should be 'debug', 'info', 'warning' or 'error'"


def test_one_environment_variable_per_setting(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("COLLECTOR_STORAGE_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("COLLECTOR_DRAIN_TIMEOUT", "2m")
    loaded = load_config(BASE, registry, settings=Settings())
    assert (loaded.raw.storage.directory, loaded.raw.service.drain_timeout) == (tmp_path, 120.0)
    monkeypatch.setenv("COLLECTOR_STORAGE", str(tmp_path / "old"))
    with pytest.raises(ValueError, match="COLLECTOR_STORAGE is not read any more: set COLLECTOR_STORAGE_DIRECTORY"):
        Settings()


def test_an_empty_environment_variable_counts_as_unset(registry, monkeypatch):
    monkeypatch.setenv("COLLECTOR_STORAGE_DIRECTORY", "")
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", "")
    loaded = load_config(BASE + "  telemetry: {log_level: error}\n", registry, settings=Settings())
    assert str(loaded.raw.storage.directory) == "data"
    assert loaded.raw.service.telemetry.log_level == "error"
