"""dashboards/alerts.yaml is a valid Prometheus rule file, and every alert has a promtool unit test
(tests/alerts/) that shows it firing and resolving again."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "dashboards" / "alerts.yaml"
ALERT_TESTS = sorted((ROOT / "tests" / "alerts").glob("*.yaml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (scripts/test says so too)"
    return subprocess.run([found, *args], capture_output=True, text=True, check=False, cwd=ROOT)


def alert_names() -> list[str]:
    return [
        rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_the_rule_file_is_valid() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout


@pytest.mark.parametrize("test_file", ALERT_TESTS, ids=[p.stem for p in ALERT_TESTS])
def test_promtool_unit_test_passes(test_file: Path) -> None:
    tested = promtool("test", "rules", str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_shown_firing_and_then_resolved() -> None:
    """Per alert, some test case expects it firing at one time and not firing at a later one."""
    shown: dict[str, set[str]] = {}
    for test_file in ALERT_TESTS:
        spec: dict[str, Any] = yaml.safe_load(test_file.read_text())
        assert spec["rule_files"] == ["../../dashboards/alerts.yaml"], test_file.name
        for case in spec["tests"]:
            checks = sorted(case["alert_rule_test"], key=lambda c: _minutes(c["eval_time"]))
            for i, check in enumerate(checks):
                if check["exp_alerts"] and any(
                    not later["exp_alerts"] and later["alertname"] == check["alertname"]
                    for later in checks[i + 1 :]
                ):
                    shown.setdefault(check["alertname"], set()).add(test_file.name)
    assert sorted(shown) == sorted(alert_names())


def _minutes(duration: str) -> float:
    """A promtool eval_time such as `3h30m` or `45m` in minutes."""
    units = {"h": 60.0, "m": 1.0, "s": 1 / 60}
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit():
            number += char
        else:
            total += int(number) * units[char]
            number = ""
    return total
