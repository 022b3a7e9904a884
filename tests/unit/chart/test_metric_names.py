"""Every metric the dashboards and alerts query is one the operator or the agent really exposes,
or one of the engines' queue gauges the operator's autoscaler reads.

The names are taken from the PromQL itself (parsed with ``promql_parser``), the exposed names
from the exposition the two processes serve: the operator's ``sovereign.metrics.REGISTRY`` and
the agent's ``GpuMetrics`` collector fed by the fake NVML. A renamed metric then fails here
instead of leaving an empty panel or an alert that can never fire. ``up`` is the one exception:
Prometheus records it for every scrape target.
"""

from __future__ import annotations

import re

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest

from sovereign_dev import chart, dashboards
from sovereign.metrics import REGISTRY
from sovereign.nvml import open_reader
from sovereign.render import monitoring
from sovereign_dev.nvml_fake import healthy_node, write_scenario
from sovereign.nvml.readings import XidEvent
from sovereign.services.gpu_metrics import GpuMetrics

#: Series Prometheus itself records for every target.
SCRAPE_SERIES = {"up"}
#: Grafana's placeholders, replaced by something PromQL parses.
GRAFANA = {dashboards.RATE: "5m", dashboards.RANGE: "1h"}
#: Sample names a family of each type carries, after the name on its TYPE line (in the
#: Prometheus text format a counter's TYPE line already names its samples, _total or not).
SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "summary": ("", "_sum", "_count"), "untyped": ("",)}
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
ALERTS = [rule for group in yaml.safe_load((chart.CHART / "files" / "alerts.yaml").read_text())["groups"]
          for rule in group["rules"]]


def exposed(text: str) -> set[str]:
    """Sample names an exposition text can carry, from each family's name and type (a labelled
    metric with no series yet shows only its HELP and TYPE lines)."""
    return {f"{name}{suffix}" for name, kind in TYPE_LINE.findall(text)
            for suffix in SUFFIXES[kind]}


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> set[str]:
    scenario = tmp_path_factory.mktemp("nvml") / "node.json"
    write_scenario(scenario, healthy_node(seed="gpu-node"))
    reader = open_reader(fake_scenario=scenario)
    metrics = GpuMetrics(hostname="gpu-node")
    readings = reader.read()
    metrics.observe(readings=readings, verdicts=[])
    metrics.count_xids([XidEvent(gpu_index=0, xid=79)], reader.identities)
    # The engines' queue gauges come from vLLM and llama-server, which cannot run here: the
    # names the operator's autoscaler and scrape targets use (render.monitoring) stand for them.
    return (exposed(generate_latest(REGISTRY).decode()) | exposed(metrics.exposition())
            | set(monitoring.QUEUE_METRICS.values()))


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects; a Grafana ``label_values(selector, label)``
    query counts as its selector."""
    label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr.strip())
    if label_values:
        expr = label_values.group(1)
    for placeholder, value in GRAFANA.items():
        expr = expr.replace(placeholder, value)
    names: set[str] = set()

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_the_parser_finds_names_in_every_place_a_query_puts_them():
    expr = ('histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="1"}[$__rate_interval]))) / on (x) b '
            'or absent(up{job="j"} == 1) or (c unless c offset 10m)')
    assert metric_names(expr) == {"a_bucket", "b", "up", "c"}
    assert metric_names('label_values(d{node=~"$node"}, gpu)') == {"d"}


def test_the_exposition_has_both_processes_metrics(exposition):
    assert {"sovereign_stack_ready", "sovereign_reconcile_duration_seconds_bucket",
            "sovereign_webhook_decisions_total", "DCGM_FI_DEV_GPU_TEMP", "sovereign_gpu_xid_total",
            "sovereign_gpu_agent_nvml_up"} <= exposition


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_every_metric_a_dashboard_queries_is_exposed(name, exposition):
    dashboard = dashboards.DASHBOARDS[name]()
    used = set().union(*(metric_names(expr) for expr in dashboard.queries()))

    assert used, f"{name} queries no metric"
    assert used - exposition - SCRAPE_SERIES == set()


def test_every_metric_an_alert_queries_is_exposed(exposition):
    used = {rule["alert"]: metric_names(rule["expr"]) for rule in ALERTS}

    unknown = {alert: names - exposition - SCRAPE_SERIES for alert, names in used.items()}
    assert {alert: names for alert, names in unknown.items() if names} == {}
    assert all(used.values())
