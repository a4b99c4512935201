"""The Prometheus alert rules (contrib/helm/collector/files/prometheus-rules.yaml), checked with the real promtool.

* ``promtool check rules`` accepts the file;
* ``promtool test rules`` runs tests/deploy/alert-tests/*.yaml, where every alert fires on a failing
  synthetic series and stays silent on a healthy one (and before its ``for`` has passed);
* every alert is covered by such a case, and tells the operator what to do with a link into docs/
  that resolves to an existing file and heading.

That every metric the rules use exists in a running collector is tested in test_dashboards.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib/helm/collector/files/prometheus-rules.yaml"
ALERT_TESTS = sorted((Path(__file__).parent / "alert-tests").glob("*.yaml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool missing: .ci/run installs the Debian 'prometheus' package"
)


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


@needs_promtool
def test_promtool_check_rules_accepts_the_file() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


@needs_promtool
@pytest.mark.parametrize("case", ALERT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(case: Path) -> None:
    result = _promtool("test", "rules", str(case))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_silent_in_a_unit_test() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in ALERT_TESTS:
        doc = yaml.safe_load(case.read_text(encoding="utf-8"))
        assert [(case.parent / f).resolve() for f in doc["rule_files"]] == [RULES.resolve()]
        for test in doc["tests"]:
            for check in test.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {str(a["alert"]) for a in _alerts()}
    assert names - fires == set(), "alerts no case makes fire"
    assert names - silent == set(), "alerts no case checks for silence"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), re.M)}


def test_every_alert_says_what_to_do_and_links_existing_docs() -> None:
    for alert in _alerts():
        annotations = alert.get("annotations")
        assert isinstance(annotations, dict), alert["alert"]
        assert annotations.get("summary") and annotations.get("description"), alert["alert"]
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}, alert["alert"]
        links = re.findall(r"docs/[\w/.-]+\.md(?:#[\w-]+)?", str(annotations["description"]))
        assert links, f"{alert['alert']}: no link into docs/"
        for link in links:
            path, _, anchor = link.partition("#")
            assert (REPO / path).is_file(), f"{alert['alert']}: {path} does not exist"
            if anchor:
                assert anchor in _anchors(REPO / path), f"{alert['alert']}: no heading #{anchor} in {path}"
