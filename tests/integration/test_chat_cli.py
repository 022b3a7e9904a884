"""``sovereign chat`` against the real apiserver: every way a question can go unanswered.

Each case is what a user sees (exit code and the one error line) for a stack in the cluster
whose status says what the operator would say: no such model, several stacks with that model,
a model with no ready replica (with the ModelsReady message), a model whose Service has no
endpoint (the apiserver's service proxy answers 503), and a cluster that cannot be reached. The
answer itself, from a real engine on the real node, is asserted end to end in
``e2e/test_dev_chat.py``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign.cli import main as cli
from sovereign_dev.cluster import DevCluster

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "cpu.yaml"


def _stack(name: str) -> dict[str, Any]:
    body = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    body["metadata"] = {"name": name}
    return body


def _create(api_client: client.ApiClient, namespace: str, name: str, *,
            status: dict[str, Any] | None = None) -> None:
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _stack(name))
    if status is not None:
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                     {"status": status})


def _chat(cluster: DevCluster, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["chat", *args, "--kubeconfig", cluster.kubeconfig])
    return result.exit_code, result.stderr.strip()


def test_a_model_no_stack_declares_is_refused_with_the_models_there(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str) -> None:
    _create(api_client, namespace, "assistant")
    code, error = _chat(cluster, "summariser", "hello", "-n", namespace)
    assert code == 1
    assert error == (f"error: no stack in namespace {namespace} declares a model named 'summariser'; "
                     f"the models there: chat ({namespace}/assistant)")


def test_a_model_two_stacks_declare_needs_the_namespace_or_stack(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str) -> None:
    _create(api_client, namespace, "first")
    _create(api_client, namespace, "second")
    code, error = _chat(cluster, "chat", "hello", "-n", namespace)
    assert code == 1
    assert error == (f"error: several stacks declare a model named 'chat' ({namespace}/first, "
                     f"{namespace}/second): choose one with --namespace")
    # --stack picks one; it has no ready replica, and says so.
    code, error = _chat(cluster, "chat", "hello", "-n", namespace, "--stack", "second")
    assert code == 1
    assert f"model chat of stack {namespace}/second has no ready replica (0/0 ready)" in error


def test_a_model_without_a_ready_replica_says_why_and_where_to_watch(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str) -> None:
    waiting = "chat: 0 of 1 replicas ready (the loader is copying the weights)"
    _create(api_client, namespace, "assistant", status={
        "models": [{"name": "chat", "model": "qwen2.5-0.5b-instruct-q4_k_m", "replicas": 1,
                    "readyReplicas": 0}],
        "conditions": [{"type": "ModelsReady", "status": "False", "reason": "ModelsNotReady",
                        "message": waiting, "lastTransitionTime": "2026-11-30T12:00:00Z"}]})
    code, error = _chat(cluster, "chat", "hello", "-n", namespace)
    assert code == 1
    assert error == (f"error: model chat of stack {namespace}/assistant has no ready replica (0/1 ready): "
                     f"{waiting}; watch it with `sovereign status assistant -n {namespace} --watch` "
                     "and ask again")


def test_a_model_whose_service_has_no_endpoint_gives_no_answer(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str) -> None:
    # The status says Ready, but nothing serves behind the Service (its pods just went away).
    _create(api_client, namespace, "assistant", status={
        "models": [{"name": "chat", "model": "qwen2.5-0.5b-instruct-q4_k_m", "replicas": 1,
                    "readyReplicas": 1}]})
    client.CoreV1Api(api_client).create_namespaced_service(namespace, {
        "metadata": {"name": "chat"},
        "spec": {"selector": {"app": "gone"}, "ports": [{"port": 8000, "targetPort": 8000}]}})
    code, error = _chat(cluster, "chat", "hello", "-n", namespace)
    assert code == 1
    # 503 "no endpoints available", or 404 while the endpoints controller has not caught up.
    assert re.fullmatch(rf"error: model chat of stack {namespace}/assistant did not answer: could not "
                        rf"POST /v1/chat/completions to Service {namespace}/chat:8000: HTTP (503|404): "
                        r".*endpoints.*", error, re.S), error


def test_an_unreachable_cluster_is_an_environment_problem(tmp_path: Path,
                                                          cluster: DevCluster) -> None:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["chat", "chat", "hello", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: cannot read the cluster: could not list SovereignStack objects: "
                                    "apiserver unreachable")


def test_a_stack_without_its_namespace_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["chat", "chat", "hello", "--stack", "assistant"])
    assert result.exit_code == 2
    assert "Error: --stack needs its namespace: add -n NAMESPACE" in result.stderr
