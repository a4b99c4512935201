"""The public API page lists exactly what ``collector.api`` exports, so the two cannot drift.

docs/plugin-api.md is what a plugin author reads instead of the core's source:
every name in ``collector.api.__all__`` must be on it, and every name its
tables present as part of ``collector.api`` must really be exported.
"""

from __future__ import annotations

import re
from pathlib import Path

import collector.api

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugin-api.md"


def _api_tables() -> str:
    """The page up to the testing kit, which is documented there but is not collector.api."""
    text = PAGE.read_text(encoding="utf-8")
    return text.split("\n## The testing kit", 1)[0]


def _listed() -> list[str]:
    """Names in the first column of the page's tables: ``| `Name` | ... |``."""
    return re.findall(r"^\| `(\w+)` \|", _api_tables(), re.M)


def test_every_public_name_is_on_the_api_page():
    missing = sorted(set(collector.api.__all__) - set(_listed()))
    assert not missing, f"docs/plugin-api.md does not list {missing}: add a line for each, in its group"


def test_the_api_page_lists_only_public_names_once_each():
    listed = _listed()
    unknown = sorted(set(listed) - set(collector.api.__all__))
    assert not unknown, f"docs/plugin-api.md lists {unknown}, which collector.api does not export"
    assert len(listed) == len(set(listed)), "a name is listed twice"


def test_the_page_states_the_version_plugins_pin():
    major, minor = collector.api.API_VERSION.split(".")
    text = _api_tables()
    assert f'`"{collector.api.API_VERSION}"`' in text
    assert f"collector-core>={major}.{minor},<{major}.{int(minor) + 1}" in text
