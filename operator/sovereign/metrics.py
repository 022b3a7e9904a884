"""The operator's Prometheus metrics: one definition of every name the dashboards and alerts use.

Services and handlers record into these objects; ``sovereign run`` exposes them on its metrics
port. The node agent's GPU metrics live with the agent (``services.node_agent``), because they
are served by another process. A test cross-checks that every metric name used by the chart's
dashboards and alerts is defined here or by the agent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_DURATION = Histogram(
    "sovereign_reconcile_duration_seconds",
    "Time one reconcile pass of a SovereignStack took, from reading facts to the status patch.",
    ["namespace", "stack"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "sovereign_reconcile_errors_total",
    "Reconcile passes that ended in an error, by reason (CamelCase, as in the Ready condition).",
    ["namespace", "stack", "reason"],
    registry=REGISTRY,
)
OBJECT_WRITES = Counter(
    "sovereign_object_writes_total",
    "Server-side applies and deletions the operator sent, by kind and operation (apply, prune).",
    ["namespace", "stack", "kind", "operation"],
    registry=REGISTRY,
)
STACK_READY = Gauge(
    "sovereign_stack_ready",
    "1 when the stack's Ready condition is True, else 0.",
    ["namespace", "stack"],
    registry=REGISTRY,
)
STACK_CONDITION = Gauge(
    "sovereign_stack_condition",
    "1 for the current status of each condition of each stack (True, False or Unknown).",
    ["namespace", "stack", "condition", "status"],
    registry=REGISTRY,
)
MODEL_REPLICAS = Gauge(
    "sovereign_model_replicas",
    "Desired replicas of each model's inference server.",
    ["namespace", "stack", "model"],
    registry=REGISTRY,
)
MODEL_READY_REPLICAS = Gauge(
    "sovereign_model_ready_replicas",
    "Ready replicas of each model's inference server, as observed on its Deployment.",
    ["namespace", "stack", "model"],
    registry=REGISTRY,
)
MODEL_EVALUATIONS = Counter(
    "sovereign_model_evaluations_total",
    "Blue/green rollouts of a model with evaluation that ended, by result: passed (switched) or failed.",
    ["namespace", "stack", "model", "result"],
    registry=REGISTRY,
)
MODEL_EVALUATION_SCORE = Gauge(
    "sovereign_model_evaluation_score",
    "Score (0 to 1) of the last finished evaluation of each model's candidate.",
    ["namespace", "stack", "model"],
    registry=REGISTRY,
)
RESIDENCY_VIOLATIONS = Gauge(
    "sovereign_residency_violations",
    "Residency violations currently recorded for a stack, by kind of object.",
    ["stack", "namespace", "kind"],
    registry=REGISTRY,
)
WEBHOOK_DECISIONS = Counter(
    "sovereign_webhook_decisions_total",
    "Lookup webhook decisions, by webhook, kind of object, decision (allowed, denied, audited) and rule.",
    ["webhook", "kind", "decision", "rule"],
    registry=REGISTRY,
)
WEBHOOK_DURATION = Histogram(
    "sovereign_webhook_duration_seconds",
    "Time to answer one admission review.",
    ["webhook"],
    # Reviews take a fraction of a millisecond in our code: the low buckets make that visible.
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
WEBHOOK_ERRORS = Counter(
    "sovereign_webhook_errors_total",
    "Admission reviews the operator failed to answer because of an internal error.",
    ["webhook"],
    registry=REGISTRY,
)
NODE_GPU_HEALTH = Gauge(
    "sovereign_node_gpu_healthy",
    "1 when a node's GPUHealthy condition (set by the node agent) is True, as the operator sees it.",
    ["node"],
    registry=REGISTRY,
)


def forget_stack(*, namespace: str, stack: str) -> None:
    """Drop every series of a deleted stack, so dashboards do not show ghosts."""
    for metric in (RECONCILE_DURATION, RECONCILE_ERRORS, OBJECT_WRITES, STACK_READY,
                   STACK_CONDITION, MODEL_REPLICAS, MODEL_READY_REPLICAS):
        for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public API
            values = dict(zip(metric._labelnames, labels))  # noqa: SLF001
            if values.get("namespace") == namespace and values.get("stack") == stack:
                metric.remove(*labels)
    for labels in list(RESIDENCY_VIOLATIONS._metrics):  # noqa: SLF001
        if labels[0] == stack and labels[1] == namespace:
            RESIDENCY_VIOLATIONS.remove(*labels)
