"""The scrape target of each model: a PodMonitor where the Prometheus Operator is installed, and
the same scrape as a plain Prometheus job (the README's) where it is not."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import yaml
from test_cli_render import FULL, _render

from sovereign.render.inference import render_model
from sovereign.render.monitoring import scrape_job

README = Path(__file__).resolve().parents[3] / "README.md"


def _monitors(stack, facts):
    return {obj["metadata"]["name"]: obj for model in stack.spec.models
            for obj in render_model(stack=stack, model=model, facts=facts) if obj["kind"] == "PodMonitor"}


def test_each_model_gets_a_pod_monitor_of_its_own_pods_on_the_api_port(full_stack, facts) -> None:
    monitors = _monitors(full_stack, facts)

    assert sorted(monitors) == ["chat", "embed"]
    chat = monitors["chat"]
    assert (chat["apiVersion"], chat["metadata"]["namespace"]) == ("monitoring.coreos.com/v1", "gov-qa")
    assert chat["spec"]["selector"] == {"matchLabels": {
        "app.kubernetes.io/name": "chat", "app.kubernetes.io/component": "inference",
        "sovereign.ai/stack": "citizen-services"}}
    (endpoint,) = chat["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    # The Deployment's container names that port: a PodMonitor naming another scrapes nothing.
    deployment = next(o for o in render_model(stack=full_stack, model=full_stack.spec.models[0], facts=facts)
                      if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["http"]


def test_series_get_the_stack_and_model_labels_the_autoscaler_queries(full_stack, facts) -> None:
    (endpoint,) = _monitors(full_stack, facts)["chat"]["spec"]["podMetricsEndpoints"]
    copied = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}

    assert copied == {"stack": ["__meta_kubernetes_pod_label_sovereign_ai_stack"],
                      "model": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]}
    scaled = next(o for o in render_model(stack=full_stack, model=full_stack.spec.models[0], facts=facts)
                  if o["kind"] == "ScaledObject")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert 'stack="citizen-services"' in query and 'model="chat"' in query


def test_llama_cpp_models_are_scraped_too(cpu_stack, facts) -> None:
    (model,) = cpu_stack.spec.models
    objects = render_model(stack=cpu_stack, model=model, facts=facts)
    (container,) = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]

    assert "--metrics" in container["args"]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "PodMonitor"] == [model.name]


def test_no_pod_monitor_where_the_cluster_does_not_serve_the_kind(full_stack, facts) -> None:
    assert _monitors(full_stack, replace(facts, pod_monitors=False)) == {}
    result = _render("-f", FULL, "-n", "gov-qa", "--no-pod-monitors")
    assert result.exit_code == 0, result.output
    assert "kind: PodMonitor" not in result.output
    assert "kind: PodMonitor" in _render("-f", FULL, "-n", "gov-qa").output


def test_the_readme_scrape_job_is_the_one_the_operator_defines() -> None:
    block = re.search(r"```yaml\nscrape_configs:\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no scrape_configs example"

    assert yaml.safe_load("scrape_configs:\n" + block.group(1)) == {"scrape_configs": [scrape_job()]}


def test_the_scrape_job_keeps_only_the_operators_model_pods_on_their_api_port() -> None:
    keeps = {tuple(r["source_labels"]): r["regex"] for r in scrape_job()["relabel_configs"] if r.get("action") == "keep"}

    assert keeps == {("__meta_kubernetes_pod_label_sovereign_ai_stack",): ".+",
                     ("__meta_kubernetes_pod_label_app_kubernetes_io_component",): "inference",
                     ("__meta_kubernetes_pod_container_port_name",): "http"}
