"""Plugin discovery: good, broken, duplicate, disabled, allow-listed, strict."""

from __future__ import annotations

import json

import pytest

from collector.config import load_config
from collector.errors import ConfigError
from collector.plugins import PluginSelection, load_registry

GOOD = """
from pydantic import BaseModel, ConfigDict, Field
from collector.components import Exporter, ExporterConfig
from collector.hookspecs import hookimpl
from collector.specs import ComponentSpec, FunctionSpec

class NullConfig(ExporterConfig):
    note: str = Field("", description="ignored")

class Null(Exporter):
    async def export(self, events):
        return None

@hookimpl
def collector_exporters():
    return [ComponentSpec("exporter", "null", NullConfig, lambda ctx, cfg: Null(ctx, cfg))]

@hookimpl
def collector_functions():
    return [FunctionSpec("double", lambda x: 2 * x, "Twice x.")]
"""

BROKEN = "import this_module_does_not_exist\n"

DUPLICATE = GOOD.replace('"double"', '"triple"')

MINIMAL_CONFIG = """
receivers: {http: {endpoint: "127.0.0.1:0"}}
exporters: {"%s": {}}
service: {pipelines: {p: {receivers: [http], exporters: ["%s"]}}}
"""


def test_good_plugin_is_loaded_with_its_components(make_dist, clean_env):
    make_dist("collector-plugin-null", "cp_null", GOOD, version="1.2.3", ep_name="null")
    reg = load_registry()
    info = next(p for p in reg.plugins if p.name == "null")
    assert (info.distribution, info.version, info.status) == ("collector-plugin-null", "1.2.3", "loaded")
    assert info.components == ["exporter/null"]
    assert reg.component("exporter", "null").type == "null"
    assert reg.functions()["double"].func(4) == 8
    loaded = load_config(MINIMAL_CONFIG % ("null", "null"), reg)
    assert ("exporter", "null") in loaded.components


def test_broken_plugin_unused_is_a_warning_naming_distribution(make_dist, clean_env, caplog):
    make_dist("collector-plugin-broken", "cp_broken", BROKEN, version="0.9.0", ep_name="broken")
    reg = load_registry()
    info = next(p for p in reg.plugins if p.name == "broken")
    assert info.status == "failed"
    assert "No module named 'this_module_does_not_exist'" in (info.error or "")
    # Not used by the config: loading works, and a warning names dist and version.
    load_config(MINIMAL_CONFIG % ("debug", "debug"), reg)
    assert reg.check() == []
    with caplog.at_level("WARNING", logger="collector.plugins"):
        reg.warn_broken()
    assert "collector-plugin-broken 0.9.0" in caplog.text


def test_unknown_component_lists_installed_types_and_broken_plugins(make_dist, clean_env):
    make_dist("collector-plugin-broken", "cp_broken2", BROKEN, ep_name="broken")
    reg = load_registry()
    with pytest.raises(ConfigError) as exc:
        load_config(MINIMAL_CONFIG % ("kafka", "kafka"), reg)
    assert str(exc.value).startswith(
        "exporters.kafka: unknown exporter type 'kafka'; installed exporter types: debug, openmeter"
    )
    assert "plugins that failed to load: collector-plugin-broken 1.0.0" in str(exc.value)


def test_strict_mode_turns_a_broken_plugin_into_an_error(make_dist, clean_env):
    make_dist("collector-plugin-broken", "cp_broken3", BROKEN, ep_name="broken")
    reg = load_registry(PluginSelection(strict=True))
    errors = reg.check(strict=True)
    assert len(errors) == 1
    assert errors[0].startswith("plugin 'broken' (collector-plugin-broken 1.0.0) failed to load")


def test_two_plugins_declaring_the_same_type_is_an_error_naming_both(make_dist, clean_env):
    make_dist("collector-plugin-null", "cp_null_a", GOOD, ep_name="null_a")
    make_dist("collector-plugin-othernull", "cp_null_b", DUPLICATE, version="2.0.0", ep_name="null_b")
    reg = load_registry()
    errors = reg.check()
    assert errors == [
        "exporter type 'null' is declared by both collector-plugin-null 1.0.0 and "
        "collector-plugin-othernull 2.0.0; uninstall one of them or disable one with COLLECTOR_PLUGINS"
    ]


def test_builtin_types_cannot_be_shadowed(make_dist, clean_env):
    shadow = GOOD.replace('"null"', '"debug"')
    make_dist("collector-plugin-shadow", "cp_shadow", shadow, ep_name="shadow")
    errors = load_registry().check()
    assert len(errors) == 1 and "exporter type 'debug' is declared by both collector-core" in errors[0]


def test_disable_plugins_loads_no_third_party_code(make_dist, monkeypatch, clean_env):
    make_dist("collector-plugin-null", "cp_null_d", GOOD, ep_name="null")
    monkeypatch.setenv("COLLECTOR_DISABLE_PLUGINS", "1")
    reg = load_registry()
    info = next(p for p in reg.plugins if p.name == "null")
    assert info.status == "disabled"
    assert "cp_null_d" not in __import__("sys").modules
    assert [s.type for s in reg.components("exporter")] == ["debug", "openmeter"]


def test_allow_list_by_entry_point_or_distribution(make_dist, monkeypatch, clean_env):
    make_dist("collector-plugin-null", "cp_null_e", GOOD, ep_name="null")
    make_dist("collector-plugin-other", "cp_other", DUPLICATE.replace('"null"', '"other"'), ep_name="other")
    monkeypatch.setenv("COLLECTOR_PLUGINS", "collector-plugin-other")
    reg = load_registry()
    status = {p.name: p.status for p in reg.plugins}
    assert {k: status[k] for k in ("builtin", "null", "other")} == {
        "builtin": "loaded",
        "null": "disabled",
        "other": "loaded",
    }
    # Everything else installed (first-party plugins) is outside the allow-list too.
    assert all(v == "disabled" for k, v in status.items() if k not in ("builtin", "other"))
    monkeypatch.setenv("COLLECTOR_PLUGINS", "null")
    status = {p.name: p.status for p in load_registry().plugins}
    assert status["null"] == "loaded" and status["other"] == "disabled"


def test_a_hook_that_raises_marks_only_its_plugin_failed(make_dist, clean_env):
    code = GOOD + "\n@hookimpl\ndef collector_receivers():\n    raise RuntimeError('boom')\n"
    make_dist("collector-plugin-half", "cp_half", code, ep_name="half")
    reg = load_registry()
    info = next(p for p in reg.plugins if p.name == "half")
    assert info.status == "failed" and "RuntimeError: boom" in (info.error or "")
    assert reg.component("receiver", "http")  # the others are unaffected


def test_plugins_command_lists_broken_plugin_and_json(make_dist, cli, tmp_path):
    make_dist("collector-plugin-broken", "cp_broken_cli", BROKEN, version="0.1.0", ep_name="broken")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    out = cli("plugins", env=env)
    assert out.returncode == 0, out.stderr
    assert "broken" in out.stdout and "collector-plugin-broken" in out.stdout and "failed" in out.stdout
    data = json.loads(cli("plugins", "--json", env=env).stdout)
    broken = next(p for p in data if p["name"] == "broken")
    assert broken["status"] == "failed" and broken["version"] == "0.1.0"
    strict = cli("plugins", "--strict-plugins", env=env)
    assert strict.returncode == 2


def test_validate_with_strict_plugins_refuses_a_broken_plugin(make_dist, cli, tmp_path):
    make_dist("collector-plugin-broken", "cp_broken_strict", BROKEN, version="0.2.0", ep_name="broken")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL_CONFIG % ("debug", "debug"))
    env = {"PYTHONPATH": str(tmp_path / "site")}
    assert cli("validate", "-c", str(cfg), env=env).returncode == 0  # a warning only
    for args, extra in (((), {"COLLECTOR_STRICT_PLUGINS": "true"}), (("--strict-plugins",), {})):
        out = cli("validate", *args, "-c", str(cfg), env={**env, **extra})
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: plugins: plugin 'broken' (collector-plugin-broken 0.2.0) failed to load")


MISSPELT = (
    GOOD
    + """
@hookimpl
def collector_receiver():
    return []
"""
)


def test_a_misspelt_hook_fails_its_plugin_by_name_and_the_others_load(make_dist, clean_env, caplog):
    make_dist("collector-plugin-typo", "cp_typo", MISSPELT, version="0.3.0", ep_name="typo")
    make_dist("collector-plugin-null", "cp_null_ok", GOOD.replace('"double"', '"twice"'), ep_name="null")
    reg = load_registry()
    typo = next(p for p in reg.plugins if p.name == "typo")
    assert typo.status == "failed"
    assert typo.error == "hook 'collector_receiver' matches no hook specification (did you mean 'collector_receivers'?)"
    # None of its hooks is used, not even the correctly spelt ones: the plugin is broken as a whole.
    assert typo.components == [] and "double" not in reg.functions()
    assert next(p for p in reg.plugins if p.name == "null").status == "loaded"
    assert reg.component("exporter", "null").type == "null"
    # Not strict: a warning naming the plugin; strict: an error.
    assert reg.check() == []
    with caplog.at_level("WARNING", logger="collector.plugins"):
        reg.warn_broken()
    assert "plugin typo (collector-plugin-typo 0.3.0) failed to load" in caplog.text
    assert reg.check(strict=True) == [
        "plugin 'typo' (collector-plugin-typo 0.3.0) failed to load: hook 'collector_receiver' matches no hook "
        "specification (did you mean 'collector_receivers'?) (--strict-plugins)"
    ]


def test_an_in_process_plugin_with_an_unknown_hook_is_failed_too(clean_env):
    from collector.hookspecs import hookimpl

    class Sloppy:
        @hookimpl
        def collector_exporter(self) -> list[object]:
            return []

        @hookimpl
        def collector_setup(self) -> None:
            return None

    reg = load_registry(PluginSelection(disabled=True), extra_plugins=[("sloppy", Sloppy())])
    info = next(p for p in reg.plugins if p.name == "sloppy")
    assert info.status == "failed"
    assert "hook 'collector_exporter' matches no hook specification (did you mean 'collector_exporters'?)" in (
        info.error or ""
    )
    assert "hook 'collector_setup' matches no hook specification" in (info.error or "")
    assert next(p for p in reg.plugins if p.name == "builtin").status == "loaded"


def test_plugins_command_shows_a_misspelt_hook_and_strict_fails_on_it(make_dist, cli, tmp_path):
    make_dist("collector-plugin-typo", "cp_typo_cli", MISSPELT, version="0.4.0", ep_name="typo")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    out = cli("plugins", env=env)
    assert out.returncode == 0, out.stderr
    assert "typo: failed: hook 'collector_receiver' matches no hook specification" in out.stdout
    assert cli("plugins", "--strict-plugins", env=env).returncode == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL_CONFIG % ("debug", "debug"))
    assert cli("validate", "-c", str(cfg), env=env).returncode == 0
    strict = cli("validate", "--strict-plugins", "-c", str(cfg), env=env)
    assert strict.returncode == 2
    assert "plugin 'typo' (collector-plugin-typo 0.4.0) failed to load: hook 'collector_receiver'" in strict.stderr
