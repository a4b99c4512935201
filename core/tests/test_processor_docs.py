"""Every example in docs/processors/*.md runs, and gives the output the page shows.

An example is a fenced ``yaml`` block (a whole configuration with the
``scripted`` receiver and the ``memory`` exporter) followed by two fenced
``json`` blocks: the records the receiver sends (an array) and what comes out
at the exporter (an array of events), or ``{"rejected": [{"index": ..., "field": ...}]}``
when the batch is refused.  Markers in HTML comments, invisible on the rendered page:

* ``<!-- example-env: NAME=value -->`` before an example sets an environment variable for it
  (``<!-- example-env: NAME -->`` makes sure it is not set);
* ``<!-- example-file: NAME -->`` before a fenced block makes it a file that the examples
  after it on the page can read (they run in a directory holding these files).

Examples run with the clock at :data:`CLOCK` (2023-11-14T22:13:20Z), the
arrival time the pages show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.clock import FakeClock
from collector.errors import PermanentError
from collector.functions import builtin_functions
from collector.testing import run_pipeline, testing_registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "processors"
TESTS = Path(__file__).resolve().parent
# Every page, named after its processor type (docs/processors/<type>.md).
PAGES = tuple(sorted(p.stem for p in DOCS.glob("*.md")))
# Pages whose examples another test runs (their output needs more than one call, e.g. a clock
# that moves); this suite still checks that they document every setting.
RUN_ELSEWHERE = {"aggregate": "test_aggregate.py"}
EXAMPLE_PAGES = tuple(p for p in PAGES if p not in RUN_ELSEWHERE)
CLOCK = 1_700_000_000.0

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*example-(env|file):\s*(.*?)\s*-->")


@dataclass
class Example:
    name: str
    config: str
    records: Any
    expected: Any
    env: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the page could not be parsed


def parse_page(page: str) -> list[Example]:
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    blocks = []  # (language, body, line, markers between the previous block and this one)
    last = 0
    for m in _FENCE.finditer(text):
        markers = _MARKER.findall(text[last : m.start()])
        blocks.append((m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1, markers))
        last = m.end()
    examples: list[Example] = []
    files: dict[str, str] = {}
    i = 0
    while i < len(blocks):
        lang, body, line, markers = blocks[i]
        file_names = [value for kind, value in markers if kind == "file"]
        if file_names:
            files[file_names[-1]] = body
            i += 1
            continue
        if lang == "json":
            raise AssertionError(f"{page}.md:{line}: a json block that follows no yaml example")
        if lang != "yaml":
            i += 1
            continue
        follow = blocks[i + 1 : i + 3]
        if [b[0] for b in follow] != ["json", "json"]:
            raise AssertionError(
                f"{page}.md:{line}: a yaml example needs a json input and a json output block after it"
            )
        env: dict[str, str | None] = {}
        for kind, spec in markers:
            if kind == "env":
                name, eq, value = spec.partition("=")
                env[name.strip()] = value if eq else None
        examples.append(
            Example(
                f"{page}.md:{line}",
                body,
                orjson.loads(follow[0][1]),
                orjson.loads(follow[1][1]),
                env,
                dict(files),
            )
        )
        i += 3
    return examples


def _all_examples() -> list[Example]:
    found = []
    for page in EXAMPLE_PAGES:
        try:
            found.extend(parse_page(page))
        except (OSError, AssertionError, ValueError) as exc:  # reported by test_example, not at collection
            found.append(Example(f"{page}.md", "", None, None, error=f"{type(exc).__name__}: {exc}"))
    return found


ALL = _all_examples()


def test_every_page_has_examples():
    for page in EXAMPLE_PAGES:
        assert len(parse_page(page)) >= 2, f"{page}.md needs runnable examples"
    for page, test in RUN_ELSEWHERE.items():
        assert f"{page}.md" in (TESTS / test).read_text(encoding="utf-8"), f"{test} does not run {page}.md"


def test_every_builtin_processor_has_a_page():
    from collector.builtin import _PROCESSORS

    assert {row[0] for row in _PROCESSORS} <= set(PAGES)
    assert {"mapping", "filter", "validate", "attributes", "ensure_id"} <= set(EXAMPLE_PAGES)


@pytest.mark.parametrize("example", ALL, ids=[e.name for e in ALL])
async def test_example(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if example.error:
        pytest.fail(example.error)
    for name, value in example.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    workdir = tmp_path / "work"
    workdir.mkdir()
    for name, body in example.files.items():
        (workdir / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(workdir)
    assert isinstance(example.records, list), "the input block is a JSON array of records"
    rejected = None
    async with run_pipeline(
        example.config, tmp_path / "storage", registry=testing_registry(), clock=FakeClock(CLOCK)
    ) as p:
        assert "scripted" in p.service.receivers and "memory" in p.service.exporters
        exporter = p.exporter()
        try:
            await p.receiver().send(example.records)
        except PermanentError as exc:
            rejected = [{"index": r.index, "field": r.field} for r in exc.records]
    # Leaving the context stopped the service, which drained the queue into the exporter.
    if isinstance(example.expected, dict):
        assert set(example.expected) == {"rejected"}, "the output block is an array, or {rejected: [...]}"
        assert rejected == example.expected["rejected"]
        assert exporter.events == []
    else:
        assert rejected is None, f"the batch was refused: {rejected}"
        assert exporter.events == example.expected


def _config_fields(type_name: str) -> list[str]:
    spec = testing_registry().component("processor", type_name)
    return list(spec.config_model.model_fields)


@pytest.mark.parametrize("page", PAGES)
def test_every_config_field_is_documented(page: str) -> None:
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    missing = [name for name in _config_fields(page) if f"`{name}`" not in text]
    assert not missing, f"{page}.md does not document {missing}"


def test_mapping_page_lists_every_curated_function_and_the_trust_model() -> None:
    text = (DOCS / "mapping.md").read_text(encoding="utf-8")
    missing = [name for name in builtin_functions() if f"`{name}(" not in text]
    assert not missing, f"mapping.md does not list {missing}"
    assert "not a sandbox" in text
