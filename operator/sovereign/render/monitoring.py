"""Scrape targets: per model, a Prometheus Operator ``PodMonitor`` of its inference pods.

KEDA's Prometheus trigger (``render.inference``) and the chart's dashboards read the model
servers' own metrics (vLLM's ``vllm:num_requests_waiting``, llama-server's ``llamacpp:*``, both
served on ``/metrics`` of the API port ``http``), so Prometheus must scrape every replica. Each
series gets the labels the queries select on: ``namespace`` (the Prometheus Operator adds it to
every PodMonitor target), and ``stack`` and ``model`` copied from the pods' labels, so two stacks
with a model of the same name in one namespace never share a series, and llama-server's metrics,
which carry no model label of their own, can be told apart.

The PodMonitor is rendered only when the cluster serves the Prometheus Operator's CRDs
(``facts.pod_monitors``); without them, ``scrape_job`` is the equivalent job for a plain
Prometheus (``kubernetes_sd_configs``, pod role), which the README gives as text (a test keeps
the two equal). Pure; called by ``render.inference``.
"""

from __future__ import annotations

import re
from typing import Any

from sovereign.api import Engine, ModelSpec, SovereignStack
from sovereign.render import names
from sovereign.render.names import Component

#: Where the model servers serve their metrics: the API port, by its container port name.
METRICS_PORT_NAME = "http"
METRICS_PATH = "/metrics"
#: How often each replica is scraped: KEDA polls every 30 s, so a queue is seen within one poll.
SCRAPE_INTERVAL = "15s"
#: The labels every model-server series gets, from the pod label each is copied from.
STACK_SERIES_LABEL = "stack"
MODEL_SERIES_LABEL = "model"
SERIES_LABELS = {STACK_SERIES_LABEL: names.STACK_LABEL, MODEL_SERIES_LABEL: names.NAME_LABEL}
#: Each engine's gauge of requests waiting for a free slot: vLLM's queue, which the autoscaler
#: reads, and llama-server's deferred requests (``--metrics``), which the dashboards show beside it.
QUEUE_METRICS = {Engine.VLLM: "vllm:num_requests_waiting", Engine.LLAMA_CPP: "llamacpp:requests_deferred"}


def queue_query(*, stack: SovereignStack, model: ModelSpec) -> str:
    """PromQL for the requests waiting across ``model``'s replicas, by the labels its scrape
    target gives every series: KEDA's trigger (vLLM), and what the dashboards plot."""
    selector = ",".join(f'{label}="{value}"' for label, value in (
        ("namespace", names.stack_namespace(stack)), (STACK_SERIES_LABEL, names.stack_name(stack)),
        (MODEL_SERIES_LABEL, model.name)))
    return f"sum({QUEUE_METRICS[model.engine]}{{{selector}}})"


def pod_monitor(*, stack: SovereignStack, model: ModelSpec) -> dict[str, Any]:
    """The PodMonitor scraping ``model``'s inference pods (every revision's) in the stack's namespace."""
    return names.stamped({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": names.metadata(stack, name=model.name, component=Component.INFERENCE, entry=model.name),
        "spec": {
            "selector": {"matchLabels": names.selector_labels(stack, component=Component.INFERENCE, name=model.name)},
            "podMetricsEndpoints": [{
                "port": METRICS_PORT_NAME,
                "path": METRICS_PATH,
                "interval": SCRAPE_INTERVAL,
                "relabelings": [
                    {"sourceLabels": [pod_label_meta(label)], "targetLabel": target, "action": "replace"}
                    for target, label in SERIES_LABELS.items()
                ],
            }],
        },
    })


def pod_label_meta(label: str) -> str:
    """Prometheus's discovery label for a pod label (every character outside [a-zA-Z0-9_] becomes ``_``)."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


def scrape_job(*, job_name: str = "sovereign-models") -> dict[str, Any]:
    """The same scrape as the PodMonitors, as one job of a plain Prometheus's ``scrape_configs``:
    every operator-made pod of the component ``inference`` with a container port named ``http``, with the
    ``namespace``, ``stack`` and ``model`` labels the autoscaler's query and the dashboards use."""
    component_meta = pod_label_meta(names.COMPONENT_LABEL)
    return {
        "job_name": job_name,
        "scrape_interval": SCRAPE_INTERVAL,
        "metrics_path": METRICS_PATH,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {"source_labels": [pod_label_meta(names.STACK_LABEL)], "regex": ".+", "action": "keep"},
            {"source_labels": [component_meta], "regex": Component.INFERENCE.value, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": METRICS_PORT_NAME,
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            *({"source_labels": [pod_label_meta(label)], "target_label": target}
              for target, label in SERIES_LABELS.items()),
        ],
    }
