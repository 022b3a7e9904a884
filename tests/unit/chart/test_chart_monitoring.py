"""The chart's monitoring objects: scrape configs whose labels the alerts rely on, the alerts
themselves, and the Grafana dashboards as ConfigMaps for the Grafana sidecar."""

from __future__ import annotations

import json
import re

import yaml
from chart_helpers import one

from sovereign_dev import chart, dashboards
from sovereign_dev.chart import RELEASE

ALERTS = yaml.safe_load((chart.CHART / "files" / "alerts.yaml").read_text())
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def _jobs_in_alerts() -> set[str]:
    return {job for group in ALERTS["groups"] for rule in group["rules"]
            for job in re.findall(r'job="([^"]+)"', rule["expr"])}


def test_monitoring_is_off_by_default(render):
    objects = render()

    assert not {o["kind"] for o in objects} & MONITORING_KINDS
    assert not [o for o in objects if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]]


def test_scrapes_name_their_jobs_as_the_alerts_do_whatever_the_release_is_called(render):
    objects = render(chart.MONITORING, release="platform")
    service_monitor, pod_monitor = one(objects, "ServiceMonitor"), one(objects, "PodMonitor")
    service = one(objects, "Service")
    agent_pods = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]

    jobs = {service["metadata"]["labels"][service_monitor["spec"]["jobLabel"]],
            agent_pods[pod_monitor["spec"]["jobLabel"]]}
    assert jobs == _jobs_in_alerts() == {"sovereign-operator", "sovereign-gpu-agent"}
    # The ServiceMonitor finds the operator's Service, the PodMonitor the agents' pods.
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= agent_pods.items()


def test_stack_series_keep_their_namespace_and_agent_series_get_their_node(render):
    objects = render(chart.MONITORING)
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    (pod_endpoint,) = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]

    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert pod_endpoint["port"] == "metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in pod_endpoint["relabelings"]


def test_the_prometheus_rule_carries_the_tested_alert_file(render):
    rule = one(render(chart.MONITORING), "PrometheusRule")

    assert rule["spec"]["groups"] == ALERTS["groups"]


def test_alerts_can_be_retuned_or_dropped_one_by_one(render):
    rule = one(render({"monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"},
                                                         "alerts": {
        "SovereignStackNotReady": {"for": "30m", "severity": "critical"},
        "SovereignGPUAgentNVMLDown": {"enabled": False}}}}}), "PrometheusRule")
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}

    assert (rules["SovereignStackNotReady"]["for"], rules["SovereignStackNotReady"]["labels"]["severity"]) == (
        "30m", "critical")
    assert "SovereignGPUAgentNVMLDown" not in rules
    assert rules["SovereignOperatorDown"]["for"] == "5m"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"


def test_every_dashboard_is_a_configmap_for_the_grafana_sidecar(render):
    maps = [o for o in render({"monitoring": {"dashboards": {"enabled": True, "namespace": "grafana",
                                                             "annotations": {"grafana_folder": "Sovereign"}}}})
            if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"]

    shipped = {name: json.loads(text) for name, text in dashboards.render_all().items()}
    assert {name: json.loads(text) for m in maps for name, text in m["data"].items()} == shipped
    assert {m["metadata"]["name"] for m in maps} == {
        f"{RELEASE}-dashboard-{name.removesuffix('.json')}" for name in shipped}
    assert {m["metadata"]["namespace"] for m in maps} == {"grafana"}
    assert all(m["metadata"]["annotations"] == {"grafana_folder": "Sovereign"} for m in maps)
    assert {d["title"] for d in shipped.values()} == {"Sovereign stacks", "GPU health", "Residency"}
