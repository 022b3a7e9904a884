"""The alert rules, checked and unit-tested by Prometheus' own promtool.

charts/sovereign-stack-operator/files/alerts.yaml is what the chart's PrometheusRule carries;
alerts_test.yaml (beside this file) feeds each alert a history that must fire it, with the labels
and text an SRE receives, and one that must not. promtool comes from Debian's prometheus package,
which `make setup` installs; without it these tests skip, and say so in the summary and as a
warning, because then no alert is tested at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from sovereign_dev import chart
from sovereign.policy.gpu_health import GpuHealthSettings

RULES = chart.CHART / "files" / "alerts.yaml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yaml")
ALERTS = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = ("PROMTOOL IS NOT INSTALLED: THE ALERT RULES ARE NOT CHECKED OR TESTED. Install it with "
                   "`make setup` (apt-get install --no-install-recommends prometheus).")
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return found


def _run(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_promtool_accepts_the_rules(promtool):
    output = _run(promtool, "check", "rules", str(RULES))

    assert f"SUCCESS: {len(ALERTS)} rules found" in output


def test_every_alert_fires_and_stays_quiet_as_its_tests_say(promtool):
    assert "SUCCESS" in _run(promtool, "test", "rules", RULE_TESTS.name)


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    fired = {check["alertname"] for check in checks if check["exp_alerts"]}
    quiet = {check["alertname"] for check in checks if not check["exp_alerts"]}

    names = {rule["alert"] for rule in ALERTS}
    assert fired == names
    assert quiet == names


def test_every_alert_has_a_severity_summary_and_description():
    for rule in ALERTS:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_fatal_xid_alert_knows_the_agents_fatal_xids():
    (rule,) = [r for r in ALERTS if r["alert"] == "SovereignGPUXidFatal"]
    lists = set(re.findall(r'xid=~"([0-9|]+)"', rule["expr"]))

    assert len(lists) == 1, "every selector of the expression names the same XIDs"
    assert {int(xid) for xid in lists.pop().split("|")} == GpuHealthSettings().reset_xids | GpuHealthSettings().reboot_xids
