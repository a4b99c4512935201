"""``collector examples`` and the examples it ships (docs/configuration.md#examples).

The examples are package data of collector-core, so a pip user has them; the ones that deliver
to OpenMeter or Konnect refuse to start without a token (``${VAR:?message}``), and none writes
outside the current directory unless told to.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from collector.cli.examples import DOCS_URL, description, example_files
from collector.cli.main import main
from collector.config import load_config, substitute
from collector.errors import ConfigError
from collector.testing import testing_registry

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "collector" / "examples"
NAMES = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
TOKEN_VARS = ("OPENMETER_TOKEN", "KONNECT_TOKEN")


def _delivers_to_openmeter(text: str) -> bool:
    return "openmeter" in (yaml.safe_load(text).get("exporters") or {})


def test_examples_lists_every_shipped_file_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["examples"]) == 0
    out = capsys.readouterr().out
    assert len(NAMES) >= 10 and set(example_files()) == set(NAMES)
    for name in NAMES:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        text = (SHIPPED / f"{name}.yaml").read_text(encoding="utf-8")
        first = text.splitlines()[0].lstrip("#").strip()
        desc = description(text)  # the comment's first sentence, which may end before its first line does
        assert desc and line.split(None, 1)[1] == desc and (desc.startswith(first) or first.startswith(desc))
    assert DOCS_URL in out


def test_examples_writes_one_out_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "mine.yaml"
    assert main(["examples", "http-to-debug", "-o", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == (SHIPPED / "http-to-debug.yaml").read_text(encoding="utf-8")

    target.write_text("# my edits\n", encoding="utf-8")
    assert main(["examples", "http-to-debug", "-o", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "# my edits\n"

    assert main(["examples", "http-to-debug.yaml", "-o", str(target), "--force"]) == 0
    assert target.read_text(encoding="utf-8").startswith("# Try the collector out")


def test_examples_prints_to_stdout_and_names_the_choices_when_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["examples", "fan-out"]) == 0
    assert capsys.readouterr().out == (SHIPPED / "fan-out.yaml").read_text(encoding="utf-8")
    assert main(["examples", "no-such-example"]) == 2
    err = capsys.readouterr().err
    assert "no-such-example" in err and "http-to-openmeter" in err and "collector examples" in err


def test_version_flag_prints_what_the_version_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    expected = capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out == expected and out.startswith("collector-core ")


def test_help_points_to_docs_a_pip_user_can_open(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert DOCS_URL in out and "collector examples" in out


def test_required_variable_form_refuses_unset_and_empty_with_its_message() -> None:
    data = {"exporters": {"openmeter": {"token": "${TOK:?set TOK to your API token}"}}}
    assert substitute(data, {"TOK": "om_x"})["exporters"]["openmeter"]["token"] == "om_x"
    for env in ({}, {"TOK": ""}):
        with pytest.raises(ConfigError) as exc:
            substitute(data, env)
        assert "set TOK to your API token" in str(exc.value) and "exporters.openmeter.token" in str(exc.value)
    assert substitute({"a": "${X:-}"}, {}) == {"a": ""}  # the other forms are unchanged


@pytest.mark.parametrize("name", NAMES)
def test_example_needs_a_token_to_deliver_and_stays_in_the_current_directory(name: str) -> None:
    text = (SHIPPED / f"{name}.yaml").read_text(encoding="utf-8")
    registry = testing_registry(installed=True)
    # Every variable the file requires (``${VAR}`` or ``${VAR:?...}``) gets a sample value; URLs must look like URLs.
    required = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::\?[^}]*)?\}", text))
    env = {v: "https://sample.example" if v.endswith("_URL") else f"sample-{v.lower()}" for v in required}
    loaded = load_config(text, registry, source=name, environ=env)
    directory = Path(loaded.raw.storage.directory)
    assert not directory.is_absolute(), f"{name} writes to {directory} by default"
    if not _delivers_to_openmeter(text):
        return
    for missing in ({}, {v: "" for v in TOKEN_VARS}):
        with pytest.raises(ConfigError) as exc:
            load_config(
                text, registry, source=name, environ={k: v for k, v in env.items() if k not in TOKEN_VARS} | missing
            )
        message = str(exc.value)
        assert "_TOKEN" in message and ("API token" in message or "access token" in message), message
