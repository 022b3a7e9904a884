"""The Grafana dashboards shipped with the Helm chart, written as code.

Three dashboards, for the SREs of a sovereign AI platform:

- ``sovereign-stacks``: stack readiness and conditions, model replicas, reconcile latency,
  errors and writes (the operator's metrics, ``sovereign.metrics``);
- ``sovereign-gpu-health``: per node and GPU, from the node agent (``services.node_agent``):
  the agent's verdicts (``sovereign_gpu_*``) and the NVML readings under dcgm-exporter's names
  (``DCGM_FI_DEV_*``);
- ``sovereign-residency``: residency violations over time and admission decisions by rule.

Every query filters through the dashboard's variables and uses the label conventions the chart's
ServiceMonitor and PodMonitor set up (the operator's series keep the stack's ``namespace``; the
agent's carry ``node``), and the model servers' the ``stack`` and ``model`` labels their own
scrape targets give them (``sovereign.render.monitoring``). The output is deterministic (stable ids, layout and key order), so
``python -m sovereign_dev.chart`` regenerates ``charts/sovereign-stack-operator/dashboards/*.json``
byte for byte and a test fails when the files drift from this module. Pure; called by
``sovereign_dev.chart`` and the tests, which also check every metric named here exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sovereign.policy.gpu_health import GpuHealthSettings
from sovereign.render import monitoring

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
#: Grafana's own placeholders in queries; tests substitute them to parse the PromQL.
RATE = "$__rate_interval"
RANGE = "$__range"

STACKS = 'namespace=~"$namespace", stack=~"$stack"'
GPUS = 'node=~"$node", gpu=~"$gpu"'
#: The agent's default health rules, whose XID classes the GPU dashboard describes.
HEALTH = GpuHealthSettings()


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and how its series are named in the legend."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel: its kind (timeseries, stat, table, state-timeline), size and queries."""

    title: str
    kind: str
    queries: Sequence[Query]
    description: str
    width: int = 12
    height: int = 8
    unit: str = "short"
    #: Values from which a stat or timeline turns red (None: no thresholds).
    red_from: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variable:
    """A dashboard variable filled from label values of a metric (multi-select with All)."""

    name: str
    label: str
    query: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    variables: Sequence[Variable]
    panels: Sequence[Panel]

    def queries(self) -> Iterator[str]:
        """Every PromQL expression of the dashboard, variables' ``label_values`` included."""
        for variable in self.variables:
            yield variable.query
        for panel in self.panels:
            for query in panel.queries:
                yield query.expr

    def to_json(self) -> dict[str, Any]:
        return {
            "annotations": {"list": []},
            "description": self.description,
            "editable": True,
            "graphTooltip": 1,
            "panels": list(_layout(self.panels)),
            "refresh": "1m",
            "schemaVersion": 39,
            "tags": ["sovereign"],
            "templating": {"list": [_datasource_variable(), *(_variable(v) for v in self.variables)]},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }


def stacks() -> Dashboard:
    """Readiness, models and the reconciler's work, by stack."""
    return Dashboard(
        uid="sovereign-stacks",
        title="Sovereign stacks",
        description="SovereignStacks: readiness, conditions, model replicas and the operator's "
                    "reconcile passes.",
        variables=(
            Variable("namespace", "Namespace", "label_values(sovereign_stack_ready, namespace)"),
            Variable("stack", "Stack",
                     'label_values(sovereign_stack_ready{namespace=~"$namespace"}, stack)'),
        ),
        panels=(
            Panel("Ready stacks", "stat", [Query(f"sum(sovereign_stack_ready{{{STACKS}}})")],
                  "Stacks whose Ready condition is True.", width=6, height=4),
            Panel("Stacks not ready", "stat",
                  [Query(f"count(sovereign_stack_ready{{{STACKS}}} == 0) or vector(0)")],
                  "Stacks whose Ready condition is False or Unknown: `kubectl describe sstack` "
                  "says why.", width=6, height=4, red_from=1),
            Panel("Models with every replica ready", "stat",
                  [Query(f"count(sovereign_model_ready_replicas{{{STACKS}}} >= "
                         f"sovereign_model_replicas{{{STACKS}}}) or vector(0)")],
                  "Models whose inference Deployment has all its desired replicas ready.",
                  width=6, height=4),
            Panel("Models waiting for replicas", "stat",
                  [Query(f"count(sovereign_model_ready_replicas{{{STACKS}}} < "
                         f"sovereign_model_replicas{{{STACKS}}}) or vector(0)")],
                  "Models with fewer ready replicas than desired (loading weights, waiting for "
                  "GPUs, or failing).", width=6, height=4, red_from=1),
            Panel("Readiness", "state-timeline",
                  [Query(f"max by (namespace, stack) (sovereign_stack_ready{{{STACKS}}})",
                         "{{namespace}}/{{stack}}")],
                  "Ready (1) or not (0), per stack, over time.", width=24, height=6,
                  options={"mappings": [{"type": "value", "options": {
                      "0": {"text": "Not ready", "color": "red"},
                      "1": {"text": "Ready", "color": "green"}}}]}),
            Panel("Conditions", "table",
                  [Query(f"max by (namespace, stack, condition, status) "
                         f"(sovereign_stack_condition{{{STACKS}}} == 1)", instant=True)],
                  "The current status of every condition of every stack (Ready, "
                  "ResidencyCompliant, NodePoolsReady, DataStoresReady, ModelsReady, "
                  "ApplicationsReady, GPUHealthy).", width=24, height=8),
            Panel("Model replicas: ready / desired", "timeseries",
                  [Query(f"sum by (namespace, stack, model) "
                         f"(sovereign_model_ready_replicas{{{STACKS}}})",
                         "{{namespace}}/{{stack}} {{model}} ready"),
                   Query(f"sum by (namespace, stack, model) (sovereign_model_replicas{{{STACKS}}})",
                         "{{namespace}}/{{stack}} {{model}} desired")],
                  "Ready replicas of each model's inference server against the desired count.",
                  width=24),
            Panel("Requests waiting, by model", "timeseries",
                  [Query(f"sum by (namespace, {monitoring.STACK_SERIES_LABEL}, {monitoring.MODEL_SERIES_LABEL}) "
                         f"({metric}{{{STACKS}}})", "{{namespace}}/{{stack}} {{model}}")
                   for metric in monitoring.QUEUE_METRICS.values()],
                  "Requests each model's replicas hold waiting for a free slot (vLLM's queue, "
                  "which the autoscaler adds replicas on; llama-server's deferred requests), from "
                  "the scrape target the operator renders per model.", width=24),
            Panel("Reconcile latency", "timeseries",
                  [Query(f"histogram_quantile({q}, sum by (le) (rate("
                         f"sovereign_reconcile_duration_seconds_bucket{{{STACKS}}}[{RATE}])))",
                         f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
                  "Time of one reconcile pass, from reading facts to the status patch.",
                  unit="s"),
            Panel("Reconcile errors by reason", "timeseries",
                  [Query(f"sum by (namespace, stack, reason) (increase("
                         f"sovereign_reconcile_errors_total{{{STACKS}}}[{RATE}]))",
                         "{{namespace}}/{{stack}} {{reason}}")],
                  "Passes that ended in an error, by the reason the Ready condition shows.",
                  red_from=1),
            Panel("Writes by kind", "timeseries",
                  [Query(f"sum by (kind, operation) (rate("
                         f"sovereign_object_writes_total{{{STACKS}}}[{RATE}]))",
                         "{{operation}} {{kind}}")],
                  "Server-side applies and prunes per second. An unchanged stack costs none: "
                  "a steady rate means something keeps changing the operator's objects.",
                  width=24, unit="ops"),
        ),
    )


def gpu_health() -> Dashboard:
    """The node agent's view of every GPU, and the NVML readings behind it."""
    return Dashboard(
        uid="sovereign-gpu-health",
        title="GPU health",
        description="Per node and GPU: the node agent's health verdicts, XIDs and NVML "
                    "readings (dcgm-exporter names).",
        variables=(
            Variable("node", "Node", "label_values(sovereign_gpu_agent_nvml_up, node)"),
            Variable("gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_TEMP{node=~"$node"}, gpu)'),
        ),
        panels=(
            *(Panel(f"{state} GPUs", "stat",
                    [Query(f'sum(sovereign_gpu_health{{{GPUS}, state="{state}"}})')],
                    f"GPUs the agent currently judges {state}.", width=6, height=4,
                    red_from=None if state == "Healthy" else 1)
              for state in ("Healthy", "Degraded", "Unhealthy")),
            Panel("Nodes where NVML does not answer", "stat",
                  [Query('count(sovereign_gpu_agent_nvml_up{node=~"$node"} == 0) or vector(0)')],
                  "Agents that could not read their GPUs at the last poll; those nodes' "
                  "GPUHealthy condition is Unknown.", width=6, height=4, red_from=1),
            Panel("GPU verdicts", "table",
                  [Query(f"max by (node, gpu, UUID, state) (sovereign_gpu_health{{{GPUS}}} == 1)",
                         instant=True)],
                  "The current state of every GPU (Healthy, Degraded, Unhealthy); the node's "
                  "GPUHealthy condition and Events say why.", width=16, height=8),
            Panel("Nodes the operator sees GPU-healthy", "stat",
                  [Query('sum(sovereign_node_gpu_healthy{node=~"$node"})', "healthy"),
                   Query('count(sovereign_node_gpu_healthy{node=~"$node"} == 0) or vector(0)',
                         "not healthy")],
                  "Nodes whose GPUHealthy condition is True (or not), as the operator's node "
                  "index sees them when it places models.", width=8, height=8),
            Panel("XIDs", "timeseries",
                  [Query(f"sum by (node, gpu, xid) (increase(sovereign_gpu_xid_total{{{GPUS}}}"
                         f"[{RATE}]))", "{{node}} GPU {{gpu}} XID {{xid}}")],
                  f"XID events by code. {_xids(HEALTH.reset_xids)} need a GPU reset and "
                  f"{_xids(HEALTH.reboot_xids)} a reboot (the agent taints the node until it sees "
                  f"one); {_xids(HEALTH.application_xids)} end one application.",
                  width=24, red_from=1),
            Panel("Temperature", "timeseries",
                  [Query(f"DCGM_FI_DEV_GPU_TEMP{{{GPUS}}}", "{{node}} GPU {{gpu}}"),
                   Query(f"min by (node) (DCGM_FI_DEV_SLOWDOWN_TEMP{{{GPUS}}})",
                         "{{node}} slowdown threshold")],
                  "GPU temperature, and the temperature at which the GPU slows itself down.",
                  unit="celsius"),
            Panel("Power", "timeseries",
                  [Query(f"DCGM_FI_DEV_POWER_USAGE{{{GPUS}}}", "{{node}} GPU {{gpu}}"),
                   Query(f"max by (node) (DCGM_FI_DEV_ENFORCED_POWER_LIMIT{{{GPUS}}})",
                         "{{node}} limit")],
                  "Power draw against the limit the driver enforces.", unit="watt"),
            Panel("Utilisation", "timeseries",
                  [Query(f"DCGM_FI_DEV_GPU_UTIL{{{GPUS}}}", "{{node}} GPU {{gpu}}")],
                  "Share of time a kernel was running.", unit="percent"),
            Panel("Framebuffer memory used", "timeseries",
                  [Query(f"DCGM_FI_DEV_FB_USED{{{GPUS}}} / (DCGM_FI_DEV_FB_USED{{{GPUS}}} + "
                         f"DCGM_FI_DEV_FB_FREE{{{GPUS}}})", "{{node}} GPU {{gpu}}")],
                  "GPU memory in use (vLLM reserves most of it up front).", unit="percentunit"),
            Panel("ECC errors", "timeseries",
                  [Query(f"increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{GPUS}}}[{RATE}])",
                         "{{node}} GPU {{gpu}} uncorrectable"),
                   Query(f"increase(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{GPUS}}}[{RATE}])",
                         "{{node}} GPU {{gpu}} corrected")],
                  "New volatile ECC errors. Any uncorrectable one makes the GPU Unhealthy.",
                  red_from=1),
            Panel("Row remapping", "timeseries",
                  [Query(f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{GPUS}}}",
                         "{{node}} GPU {{gpu}} remapped rows"),
                   Query(f"DCGM_FI_DEV_ROW_REMAP_PENDING{{{GPUS}}}",
                         "{{node}} GPU {{gpu}} remap pending"),
                   Query(f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{GPUS}}}",
                         "{{node}} GPU {{gpu}} remap failed")],
                  "Rows remapped after uncorrectable errors; a pending remap needs a GPU reset, "
                  "a failed one a replacement.", red_from=1),
            Panel("PCIe and NVLink errors", "timeseries",
                  [Query(f"increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{GPUS}}}[{RATE}])",
                         "{{node}} GPU {{gpu}} PCIe replays"),
                   Query(f"increase(DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL{{{GPUS}}}"
                         f"[{RATE}])", "{{node}} GPU {{gpu}} NVLink CRC")],
                  "Link-level retries; a steady rise points at a bad riser, cable or NVSwitch.",
                  width=24),
            Panel("Agent node writes", "timeseries",
                  [Query(f'sum by (node, part) (increase(sovereign_gpu_agent_node_writes_total'
                         f'{{node=~"$node"}}[{RATE}]))', "{{node}} {{part}}")],
                  "Patches of the node by its agent. A steady node costs none; writes follow "
                  "health changes only.", width=24),
        ),
    )


def residency() -> Dashboard:
    """Where the residency rules were broken or enforced."""
    decisions = "sovereign_webhook_decisions_total"
    return Dashboard(
        uid="sovereign-residency",
        title="Residency",
        description="Residency violations of SovereignStacks over time, and the admission "
                    "webhooks' decisions by rule.",
        variables=(
            Variable("namespace", "Namespace",
                     "label_values(sovereign_residency_violations, namespace)"),
            Variable("stack", "Stack",
                     'label_values(sovereign_residency_violations{namespace=~"$namespace"}, stack)'),
        ),
        panels=(
            Panel("Current violations", "stat",
                  [Query(f"sum(sovereign_residency_violations{{{STACKS}}}) or vector(0)")],
                  "Objects of the selected stacks outside their allowed regions now.",
                  width=6, height=4, red_from=1),
            Panel("Stacks not compliant", "stat",
                  [Query(f'count(sovereign_stack_condition{{{STACKS}, '
                         f'condition="ResidencyCompliant", status="False"}} == 1) or vector(0)')],
                  "Stacks whose ResidencyCompliant condition is False.", width=6, height=4,
                  red_from=1),
            Panel("Denied in the range", "stat",
                  [Query(f'sum(increase({decisions}{{decision="denied"}}[{RANGE}])) or vector(0)')],
                  "Objects the webhooks refused (stacks in Enforce mode) in the selected range.",
                  width=6, height=4),
            Panel("Audited in the range", "stat",
                  [Query(f'sum(increase({decisions}{{decision="audited"}}[{RANGE}])) '
                         f'or vector(0)')],
                  "Breaches the webhooks let through and recorded (stacks in Audit mode) in the "
                  "selected range.", width=6, height=4),
            Panel("Violations over time", "timeseries",
                  [Query(f"sum by (namespace, stack, kind) "
                         f"(sovereign_residency_violations{{{STACKS}}})",
                         "{{namespace}}/{{stack}} {{kind}}")],
                  "Residency violations recorded by the audit, by stack and kind of object.",
                  width=24, red_from=1),
            Panel("Denials by rule", "timeseries",
                  [Query(f'sum by (rule, kind) (increase({decisions}{{decision="denied"}}'
                         f'[{RATE}]))', "{{rule}} ({{kind}})")],
                  "Admission requests refused, by the residency rule that refused them.",
                  red_from=1),
            Panel("Audited breaches by rule", "timeseries",
                  [Query(f'sum by (rule, kind) (increase({decisions}{{decision="audited"}}'
                         f'[{RATE}]))', "{{rule}} ({{kind}})")],
                  "Breaches let through and recorded in Audit mode, by rule."),
            Panel("Decisions by rule in the range", "table",
                  [Query(f"sum by (webhook, rule, decision) (increase({decisions}[{RANGE}]))",
                         instant=True)],
                  "Every admission decision in the selected range, by webhook, rule and "
                  "decision.", width=12),
            Panel("Webhook latency and errors", "timeseries",
                  [Query(f"histogram_quantile(0.99, sum by (le, webhook) (rate("
                         f"sovereign_webhook_duration_seconds_bucket[{RATE}])))",
                         "{{webhook}} p99"),
                   Query(f"sum by (webhook) (rate(sovereign_webhook_errors_total[{RATE}]))",
                         "{{webhook}} errors/s")],
                  "How long admission reviews take (the API server waits at most 30 s), and "
                  "reviews that failed with an internal error.", unit="s"),
        ),
    )


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "sovereign-stacks.json": stacks,
    "sovereign-gpu-health.json": gpu_health,
    "sovereign-residency.json": residency,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard, exactly as the chart ships them."""
    return {name: json.dumps(build().to_json(), indent=2, sort_keys=True) + "\n"
            for name, build in DASHBOARDS.items()}


# -- JSON model -----------------------------------------------------------------------------------

def _layout(panels: Sequence[Panel]) -> Iterator[dict[str, Any]]:
    """Panels left to right, wrapping at Grafana's 24 columns; ids in order."""
    x = y = row_height = 0
    for number, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        yield _panel(panel, number, {"h": panel.height, "w": panel.width, "x": x, "y": y})
        x += panel.width
        row_height = max(row_height, panel.height)


def _panel(panel: Panel, number: int, grid: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if panel.red_from is not None:
        steps.append({"color": "red", "value": panel.red_from})
    defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if "mappings" in panel.options:
        defaults["mappings"] = panel.options["mappings"]
    body: dict[str, Any] = {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": grid,
        "id": number,
        "targets": [_target(query, chr(ord("A") + index))
                    for index, query in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.kind == "stat":
        body["options"] = {"colorMode": "value", "graphMode": "area",
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    elif panel.kind == "table":
        body["transformations"] = [{"id": "organize",
                                    "options": {"excludeByName": {"Time": True, "Value": True}}}]
    elif panel.kind == "timeseries":
        body["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                      "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "desc"}}
    return body


def _target(query: Query, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": query.expr,
            "format": "table" if query.instant else "time_series", "instant": query.instant,
            "legendFormat": query.legend or "__auto", "range": not query.instant, "refId": ref}


def _xids(codes: frozenset[int]) -> str:
    return ", ".join(str(code) for code in sorted(codes))


def _datasource_variable() -> dict[str, Any]:
    return {"current": {}, "hide": 0, "includeAll": False, "label": "Data source",
            "multi": False, "name": "datasource", "options": [], "query": "prometheus",
            "refresh": 1, "regex": "", "type": "datasource"}


def _variable(variable: Variable) -> dict[str, Any]:
    return {"allValue": ".*", "current": {}, "datasource": DATASOURCE,
            "definition": variable.query, "hide": 0, "includeAll": True, "label": variable.label,
            "multi": True, "name": variable.name, "options": [],
            "query": {"query": variable.query, "refId": variable.name}, "refresh": 2,
            "regex": "", "sort": 1, "type": "query"}
