"""The documentation cannot drift from the code.

* ``docs/reference/`` is exactly what ``python tools/docgen.py docs/reference``
  generates from the config models;
* every file in ``core/src/collector/examples/`` (``collector examples``) passes ``collector validate``;
* every YAML block in ``docs/`` is a valid configuration (or fragment of one),
  or a verbatim copy of the config example it names;
* every Python block runs, and the ``test_*`` functions it defines pass; the
  hook examples are the hookspecs' own, the plugin files are what the plugin
  template generates;
* every ``collector ...`` command shown parses with the real argument parser;
* every relative link points to a file (and heading) that exists;
* the getting-started walk-through works as written, output included.

Markers (an HTML comment on the line right before a fenced block):

* ``<!-- include: core/src/collector/examples/x.yaml -->``: the block equals that file;
* ``<!-- no-validate: reason -->``: a YAML block that is only parsed;
* ``<!-- hookspec-example: collector_receivers -->``: the block equals that hookspec's example;
* ``<!-- template-file: path -->``: the block equals that file of the template rendered for ``scale``
  (``<!-- template-file: KIND NAME path -->``: rendered with ``--kind KIND`` for ``NAME``);
* ``<!-- test: send-event|health|metrics -->``: commands the getting-started test runs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import hookspecs
from collector.cli.main import build_parser
from collector.clock import FakeClock
from collector.config import CollectorConfig, Settings, load_config
from collector.plugins import PluginSelection, load_registry
from collector.testing import eventually_sync, testing_registry
from collector.testing.harness import run_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _load_docgen() -> types.ModuleType:
    """tools/docgen.py is a developer tool outside the runtime package: load it by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docgen", ROOT / "tools" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docgen"] = module
    spec.loader.exec_module(module)
    return module


docgen = _load_docgen()
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
EXAMPLES = ROOT / "core" / "src" / "collector" / "examples"
TEMPLATE = ROOT / "contrib" / "plugin-template"
REGENERATE = f"cd {ROOT} && .venv/bin/python tools/docgen.py docs/reference"

# Values for ${VAR} without a default in examples; anything else gets a placeholder.
SAMPLE_ENV = {
    "OPENMETER_URL": "https://openmeter.example",
    "OPENMETER_TOKEN": "om_docs_test_token",
    "KONNECT_TOKEN": "kpat_docs_test_token",
    "RUNAI_URL": "https://myorg.run.ai",
}


# Pages whose examples another suite runs in full (core/tests/test_processor_docs.py):
# the block checks below leave them alone; links and the index still cover them.
TESTED_ELSEWHERE = (DOCS / "processors",)


def md_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def checked_md_files() -> list[Path]:
    return [p for p in md_files() if not any(p.is_relative_to(d) for d in TESTED_ELSEWHERE)]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- fenced blocks ----------------------------------------------------------------------

_FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*([\w-]+):\s*(.*?)\s*-->")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    body: str
    marker: str | None
    arg: str

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    text = path.read_text(encoding="utf-8")
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = _MARKER.fullmatch(before)
        yield Block(
            path,
            text.count("\n", 0, m.start()) + 1,
            m.group(1),
            m.group(2),
            marker.group(1) if marker else None,
            marker.group(2) if marker else "",
        )


def all_blocks(*langs: str) -> list[Block]:
    return [b for p in checked_md_files() for b in blocks(p) if b.lang in langs]


# -- the generated reference -------------------------------------------------------------


def _documented() -> tuple[Any, set[str]]:
    """The registry and the distributions to document; fails clearly when one is not installed."""
    registry = load_registry(PluginSelection())
    wanted = docgen.first_party_distributions(ROOT)
    loaded = {p.distribution for p in registry.plugins if p.status == "loaded"}
    if not wanted <= loaded:
        pytest.fail(
            f"first-party plugin(s) {', '.join(sorted(wanted - loaded))} (under plugins/) are not installed or "
            "failed to load, so their reference pages cannot be checked: run `make install` (see `collector plugins`)"
        )
    return registry, wanted


def test_reference_matches_the_config_models():
    registry, wanted = _documented()
    files = docgen.render_reference(registry, wanted)
    problems = docgen.differences(REFERENCE, files)
    assert not problems, (
        "docs/reference is out of date with the config models:\n  "
        + "\n  ".join(problems)
        + f"\nregenerate it with:\n  {REGENERATE}"
    )


def test_docgen_check_mode_agrees(tmp_path):
    _documented()
    assert docgen.main([str(REFERENCE), "--root", str(ROOT), "--check"]) == 0, f"run: {REGENERATE}"
    stale = tmp_path / "ref"
    stale.mkdir()
    (stale / "receiver-gone.md").write_text(docgen.MARKER + "\n", encoding="utf-8")
    assert docgen.main([str(stale), "--root", str(ROOT), "--check"]) == 1
    assert docgen.main([str(stale), "--root", str(ROOT)]) == 0
    assert not (stale / "receiver-gone.md").exists()  # generated pages no longer produced are removed
    assert {p.name for p in stale.iterdir()} == {p.name for p in REFERENCE.glob("*.md")}


def _undescribed(model: type, path: str, seen: set[type]) -> Iterator[str]:
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        if not (field.description or "").strip():
            yield f"{path}.{name}"
        found = docgen.nested_model(field.annotation)
        if found:
            yield from _undescribed(found[0], f"{path}.{name}", seen)


def test_every_documented_setting_has_a_description():
    registry, wanted = _documented()
    missing: list[str] = []
    for spec, _ in docgen.documented_components(registry, wanted):
        missing += _undescribed(spec.config_model, f"{spec.kind}/{spec.type}", set())
        assert spec.description, f"{spec.kind}/{spec.type} has no description in its ComponentSpec"
    missing += _undescribed(CollectorConfig, "<top level>", set())
    missing += [f"env {name}" for name, f in Settings.model_fields.items() if not f.description]
    assert not missing, "settings without a description (the reference and `collector schema` show them):\n" + (
        "\n".join(missing)
    )


def test_docgen_renders_types_defaults_constraints_and_nested_models():
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, SecretStr

    from collector.components import ExporterConfig
    from collector.specs import ComponentSpec

    class Inner(BaseModel):
        """Inner settings."""

        model_config = ConfigDict(extra="forbid")
        size_bytes: int = Field(2048, gt=0, le=1 << 20, description="How | big.")

    class Demo(ExporterConfig):
        """A demo exporter."""

        mode: Literal["a", "b"] = Field("a", description="Mode.")
        secret: SecretStr | None = Field(None, description="Token.")
        names: list[str] = Field(default_factory=list, description="Names.")
        items: dict[str, Inner] = Field(default_factory=dict, description="Items by name.")
        inner: Inner = Field(default_factory=Inner, description="Inner.")
        target: str = Field(description="Required target.")

    spec = ComponentSpec("exporter", "demo", Demo, lambda ctx, cfg: None, description="Demo exporter.")
    page = docgen.render_component(spec, "collector-plugin-demo")
    assert page.startswith(docgen.MARKER)
    assert "# exporter `demo`" in page and "Demo exporter." in page and "A demo exporter." in page
    assert '| `mode` | `"a"` \\| `"b"` | `"a"` | Mode. |' in page
    assert "| `secret` | string (secret) or null | `null` | Token. (secret: never logged or printed.) |" in page
    assert "| `names` | list of string | `[]` | Names. |" in page
    assert "| `items` | map of string to [object](#itemsname) |" in page
    assert "### `items.<name>`" in page and "### `inner`" in page and "Inner settings." in page
    assert "| `size_bytes` | integer, > 0, ≤ 1048576 | `2048` (2 KiB) | How \\| big. |" in page
    assert "| `target` | string | **required** | Required target. |" in page
    assert "### `queue`" in page and "| `max_bytes` | size, > 0 | `512MiB` |" in page
    assert "| `max_age` | duration, > 0 | `7d` |" in page
    assert "## Defaults" not in page  # a required field: no all-defaults example

    class NoRequired(Demo):
        target: str = Field("x", description="Target.")

    example = docgen.render_component(ComponentSpec("exporter", "demo", NoRequired, lambda c, f: None))
    data = yaml.safe_load(example.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert data["exporters"]["demo"]["inner"] == {"size_bytes": 2048} and data["exporters"]["demo"]["secret"] is None


# -- config examples ---------------------------------------------------------------------


def example_env(text: str) -> dict[str, str]:
    """The variables a file uses without a default (``${VAR}``, ``${VAR:?message}``), with sample values."""
    needed = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::\?[^}]*)?\}", text))
    return {name: SAMPLE_ENV.get(name, f"sample-{name.lower()}") for name in needed}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_", "KONNECT_"))}
    env.update(extra)
    return env


def collector_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "collector"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "collector.cli"]


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))


def test_the_requested_examples_exist():
    names = {p.name for p in EXAMPLE_FILES}
    for wanted in ("http-to-openmeter.yaml", "http-to-debug.yaml", "konnect-v3.yaml", "buffering-relaxed.yaml",
                   "fan-out.yaml"):  # fmt: skip
        assert wanted in names


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_config_example_passes_collector_validate(example: Path):
    text = example.read_text(encoding="utf-8")
    assert text.lstrip().startswith("#"), f"{rel(example)} should open with a comment saying what it is for"
    result = subprocess.run(
        [*collector_cmd(), "validate", "-c", str(example)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(**example_env(text)),
        timeout=60,
    )
    assert result.returncode == 0, f"collector validate -c {rel(example)} failed:\n{result.stderr}{result.stdout}"
    assert "configuration OK" in result.stdout


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_config_example_is_listed_in_the_configuration_guide(example: Path):
    guide = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert f"collector/examples/{example.name}" in guide, f"add {example.name} to configuration.md#examples"


# -- YAML blocks ---------------------------------------------------------------------------

_SECTIONS = {"receivers", "processors", "exporters", "coordinators", "storage", "service"}


def complete(data: dict[str, Any]) -> dict[str, Any]:
    """A fragment made whole: a receiver, an exporter and a pipeline using everything declared."""
    data = dict(data)
    service = dict(data.get("service") or {})
    if "pipelines" not in service:
        receivers = dict(data.get("receivers") or {}) or {"http": None}
        exporters = dict(data.get("exporters") or {}) or {"debug": None}
        data["receivers"], data["exporters"] = receivers, exporters
        service["pipelines"] = {
            "docs": {
                "receivers": list(receivers),
                "processors": list(data.get("processors") or {}),
                "exporters": list(exporters),
            }
        }
    data["service"] = service
    return data


@pytest.fixture(scope="module")
def registry():
    # Installed plugins plus the testing kit's `scripted` receiver and `memory` exporter.
    return testing_registry(installed=True)


YAML_BLOCKS = all_blocks("yaml", "yml")


def test_docs_have_yaml_examples():
    assert len(YAML_BLOCKS) > 10


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_yaml_block_is_a_valid_configuration(block: Block, registry):
    if block.marker == "include":
        source = ROOT / block.arg
        assert source.is_file(), f"{block.where}: includes {block.arg}, which does not exist"
        assert block.body == source.read_text(encoding="utf-8"), (
            f"{block.where}: the block must be a verbatim copy of {block.arg}"
        )
    data = yaml.safe_load(block.body)
    if block.marker == "no-validate":
        assert block.arg, f"{block.where}: say why the block is not validated"
        return
    assert isinstance(data, dict) and set(data) <= _SECTIONS, f"{block.where}: not a configuration (mark it)"
    try:
        load_config(yaml.safe_dump(complete(data)), registry, source=block.where, environ=example_env(block.body))
    except Exception as exc:
        pytest.fail(f"{block.where}: the example does not validate:\n{exc}")


# -- Python blocks --------------------------------------------------------------------------


def hookspec_example(name: str) -> str:
    doc = getattr(hookspecs, name).__doc__
    match = re.search(r"Example::\n\n(.*)", doc, re.S)
    assert match, f"hookspec {name} has no example"
    return textwrap.dedent(match.group(1)).strip("\n") + "\n"


def template_file(arg: str) -> str | None:
    """``path`` of the template rendered for ``scale``, or ``KIND NAME path`` rendered for that kind and name."""
    kind, name, path = arg.split() if " " in arg else ("processor", "scale", arg)
    sys.path.insert(0, str(TEMPLATE))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(TEMPLATE))
    return {p.as_posix(): text for p, text in generate.render(name, kind).items()}.get(path)


def test_every_hook_has_its_example_in_the_plugin_guide():
    found = {b.arg for b in blocks(DOCS / "plugin-authors.md") if b.marker == "hookspec-example"}
    declared = {n for n in vars(hookspecs) if n.startswith("collector_")}
    assert found == declared


def test_plugin_guide_shows_the_template_files():
    shown = {b.arg for b in blocks(DOCS / "plugin-authors.md") if b.marker == "template-file"}
    assert {"pyproject.toml", "src/collector_plugin_scale/__init__.py", "tests/test_scale.py"} <= shown
    # The worked example of a pull receiver (docs/plugin-authors.md, "Pull receivers").
    assert {f"pull usage {f}" for f in ("src/collector_plugin_usage/receiver.py", "tests/test_usage.py")} <= shown


def _fixture_values(tmp_path: Path) -> dict[str, Any]:
    storage = tmp_path / "storage"
    storage.mkdir(exist_ok=True)

    def runner(yaml_text: str, **kwargs: Any) -> Any:
        return run_pipeline(yaml_text, kwargs.pop("storage_dir", storage), **kwargs)

    return {
        "collector_run_pipeline": runner,
        "collector_storage": storage,
        "collector_fake_clock": FakeClock(),
        "collector_registry": testing_registry(),
        "tmp_path": tmp_path,
    }


def _documents_with_python() -> list[Path]:
    return [p for p in checked_md_files() if any(b.lang == "python" for b in blocks(p))]


@pytest.mark.parametrize("doc", _documents_with_python(), ids=rel)
def test_python_blocks_run(doc: Path, tmp_path: Path):
    """Hook examples and template files are compared; every other block runs, in order, in one
    namespace per page, and the ``test_*`` functions the page defines are called with the kit's fixtures."""
    namespace = types.ModuleType(f"docs_{doc.stem.replace('-', '_')}")
    for block in blocks(doc):
        if block.marker == "template-file":
            assert block.body == template_file(block.arg), (
                f"{block.where}: must equal {block.arg} of the plugin template as generate.py renders it "
                f"(python contrib/plugin-template/generate.py NAME DEST --kind KIND)"
            )
            continue
        if block.lang != "python":
            continue
        if block.marker == "hookspec-example":
            assert block.body == hookspec_example(block.arg), (
                f"{block.where}: must equal the example in the docstring of hookspecs.{block.arg}"
            )
            module = types.ModuleType(f"docs_{block.arg}")
            exec(compile(block.body, block.where, "exec"), module.__dict__)
            info = next(p for p in testing_registry([("docs-example", module)]).plugins if p.name == "docs-example")
            assert info.status == "loaded" and (info.components or info.functions or info.presets), (
                f"{block.where}: {info.error}"
            )
            continue
        exec(compile(block.body, block.where, "exec"), namespace.__dict__)
    for name, fn in list(vars(namespace).items()):
        if not (name.startswith("test_") and inspect.isfunction(fn)):
            continue
        case = tmp_path / name
        case.mkdir()
        values = _fixture_values(case)
        kwargs = {p: values[p] for p in inspect.signature(fn).parameters}
        result = fn(**kwargs)
        if inspect.iscoroutine(result):
            asyncio.run(result)


# -- commands ----------------------------------------------------------------------------------

_SHELL_LANGS = ("sh", "bash", "console", "shell", "text")


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for block in all_blocks(*_SHELL_LANGS):
        for line in block.body.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            elif block.lang == "text":
                continue
            if line.startswith("collector "):
                command = re.split(r"\s[|>#]", line, maxsplit=1)[0]
                out.append((block.where, command))
    return out


def test_docs_show_commands():
    assert len(documented_commands()) > 15


@pytest.mark.parametrize(("where", "command"), documented_commands(), ids=lambda v: v)
def test_documented_command_parses(where: str, command: str, capsys):
    if command.strip() == "collector version":
        return
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` is not a valid command line ({capsys.readouterr().err.strip()}) [{exc}]")


# -- links ------------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def headings(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {docgen.slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("doc", md_files(), ids=rel)
def test_relative_links_resolve(doc: Path):
    text = _FENCE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in headings(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not broken, f"{rel(doc)}:\n  " + "\n  ".join(broken)


def test_index_links_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in checked_md_files():
        if page.parent == REFERENCE and page.name != "README.md":
            continue  # reached through reference/README.md
        if page.name == "README.md" and page.parent == DOCS:
            continue
        assert page.relative_to(DOCS).as_posix() in index, f"docs/README.md does not link {rel(page)}"


# -- component pages ----------------------------------------------------------------------------

COMPONENT_PAGES = {
    "http-receiver.md": ("receiver", "http"),
    "openmeter-exporter.md": ("exporter", "openmeter"),
    "debug-exporter.md": ("exporter", "debug"),
    "kubernetes-receiver.md": ("receiver", "kubernetes"),
    "kubernetes-lease-coordinator.md": ("coordinator", "kubernetes_lease"),
    "runai-receiver.md": ("receiver", "runai"),
    "s3-receiver.md": ("receiver", "s3"),
    "s3-exporter.md": ("exporter", "s3"),
}


@pytest.mark.parametrize("page", sorted(COMPONENT_PAGES))
def test_component_page_covers_every_setting(page: str, registry):
    kind, type_name = COMPONENT_PAGES[page]
    model = registry.component(kind, type_name).config_model
    text = (DOCS / "components" / page).read_text(encoding="utf-8")
    missing = [n for n in model.model_fields if not re.search(rf"`{re.escape(n)}[`.:\s]", text)]
    assert not missing, f"docs/components/{page} does not mention: {', '.join(missing)}"
    assert f"../reference/{kind}-{type_name}.md" in text


# -- the getting-started walk-through --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _marked(doc: Path, name: str) -> tuple[Block, Block | None]:
    found = list(blocks(doc))
    for i, block in enumerate(found):
        if block.marker == "test" and block.arg == name:
            return block, (found[i + 1] if i + 1 < len(found) else None)
    raise AssertionError(f"{rel(doc)} has no block marked <!-- test: {name} -->")


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    return eventually_sync(predicate, timeout=timeout, interval=0.05, message=what)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_getting_started_walk_through(tmp_path: Path):
    doc = DOCS / "getting-started.md"
    http, admin = _free_port(), _free_port()
    env = clean_env(
        COLLECTOR_HTTP_ENDPOINT=f"127.0.0.1:{http}",
        COLLECTOR_ADMIN_ENDPOINT=f"127.0.0.1:{admin}",
        COLLECTOR_LOG_FORMAT="json",
    )
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as so, err.open("wb") as se:
        proc = subprocess.Popen([*collector_cmd(), "run"], cwd=tmp_path, env=env, stdout=so, stderr=se)
    try:

        def sh(block: Block) -> str:
            script = block.body.replace("127.0.0.1:8080", f"127.0.0.1:{http}").replace(
                "127.0.0.1:4195", f"127.0.0.1:{admin}"
            )
            done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
            return done.stdout

        def admin_up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", admin), timeout=0.2):
                    return True
            except OSError:
                return proc.poll() is not None

        _wait(admin_up, 20, "the collector to start")
        assert proc.poll() is None, err.read_text()
        _wait(lambda: "collector started" in err.read_text(), 20, "the start-up log line")

        send, expected = _marked(doc, "send-event")
        answer = sh(send)
        assert answer.startswith("HTTP/1.1 204"), answer
        assert expected is not None and expected.lang == "json"
        printed = _wait(lambda: out.read_text().strip(), 10, "the debug exporter to print the event")
        assert json.loads(printed.splitlines()[0]) == json.loads(expected.body)
        assert printed.splitlines()[0] == expected.body.strip(), "the documented line is not what is printed"

        health, _ = _marked(doc, "health")
        status = json.loads(sh(health))
        assert status["status"] == "ok" and status["components"]["exporters"]["debug"]["queue"]["refusing"] is False

        metrics, shown = _marked(doc, "metrics")
        assert shown is not None and shown.lang == "text"
        assert _wait(lambda: sh(metrics) == shown.body, 10, f"the metrics to read:\n{shown.body}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, err.read_text()
    assert "stopping gracefully" in err.read_text()
