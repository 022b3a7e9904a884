"""values.yaml and values.schema.json: every value documented, wrong values refused with the path.

``helm lint --strict`` and ``helm template`` validate values against the schema, so a user's
typo fails the install before anything reaches the cluster, naming the value.
"""

from __future__ import annotations

import json

import pytest
import yaml

from sovereign_dev import chart
from sovereign.services.node_agent import AgentSettings

SCHEMA = json.loads((chart.CHART / "values.schema.json").read_text())
VALUES_TEXT = (chart.CHART / "values.yaml").read_text()
ALERTS = [rule["alert"] for group in yaml.safe_load((chart.CHART / "files" / "alerts.yaml").read_text())["groups"]
          for rule in group["rules"]]


#: Values that hold Kubernetes objects or maps of the user's, documented as a whole.
FREE_FORM = {"operator.resources", "operator.podSecurityContext", "operator.securityContext",
             "operator.strategy", "agent.resources", "agent.podSecurityContext", "agent.securityContext",
             "agent.updateStrategy", "agent.nodeSelector", "agent.config", "monitoring.dashboards.labels"}


def _leaves(node: yaml.MappingNode, prefix: str = "") -> list[tuple[str, int]]:
    """(dotted path, line of its key) of every value that is not a section of further values."""
    found = []
    for key, value in node.value:
        path = f"{prefix}{key.value}"
        if isinstance(value, yaml.MappingNode) and value.value and path not in FREE_FORM:
            found += _leaves(value, f"{path}.")
        else:
            found.append((path, key.start_mark.line))
    return found


@pytest.mark.parametrize("values", [{}, chart.MONITORING, {"webhook": {"certificate": {"mode": "certManager"}}},
                                    {"operator": {"watchNamespaces": ["gov-qa"]}},
                                    {"agent": {"nvml": {"mode": "hostPath"}}}],
                         ids=["defaults", "monitoring", "cert-manager", "watched-namespaces", "host-nvml"])
def test_helm_lint_passes(values):
    assert "0 chart(s) failed" in chart.lint(values=values)


def test_every_value_is_documented_in_values_yaml_and_typed_in_the_schema():
    lines = VALUES_TEXT.splitlines()
    leaves = _leaves(yaml.compose(VALUES_TEXT))
    undocumented, untyped = [], []
    for path, line in leaves:
        if not lines[line - 1].strip().startswith("#"):
            undocumented.append(path)
        node = SCHEMA
        for part in path.split("."):
            node = node.get("properties", {}).get(part)
            if node is None:
                untyped.append(path)
                break
    assert len(leaves) > 60
    assert undocumented == []
    assert untyped == []


@pytest.mark.parametrize("values, message", [
    ({"operator": {"replicas": 2}}, "at '/operator/replicas': value must be one of 0, 1"),
    ({"operatr": {}}, "additional properties 'operatr' not allowed"),
    ({"agent": {"nvml": {"mode": "device-plugin"}}}, "at '/agent/nvml/mode'"),
    ({"agent": {"config": {"poll_interval": 5}}}, "additional properties 'poll_interval' not allowed"),
    ({"webhook": {"certificate": {"mode": "vault"}}}, "at '/webhook/certificate/mode'"),
    ({"monitoring": {"prometheusRule": {"alerts": {"SovereignStackNotReady": {"for": "soon"}}}}},
     "/monitoring/prometheusRule/alerts/SovereignStackNotReady/for"),
    ({"monitoring": {"prometheusRule": {"alerts": {"NoSuchAlert": {"enabled": False}}}}},
     "invalid propertyName 'NoSuchAlert'"),
    ({"image": {"digest": "latest"}}, "at '/image/digest'"),
], ids=["two-replicas", "typo", "nvml-mode", "agent-config-typo", "cert-mode", "alert-duration", "unknown-alert",
        "digest"])
def test_wrong_values_are_refused_naming_the_value(values, message):
    with pytest.raises(chart.HelmError) as refused:
        chart.render(values=values)

    assert message in str(refused.value)


def test_the_schema_knows_every_alert_and_every_agent_setting():
    overrides = SCHEMA["properties"]["monitoring"]["properties"]["prometheusRule"]["properties"]["alerts"]
    assert overrides["propertyNames"]["enum"] == ALERTS
    config = SCHEMA["properties"]["agent"]["properties"]["config"]["properties"]
    assert set(config) == set(AgentSettings.model_fields)
