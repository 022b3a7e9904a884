"""The data path, end to end on the real node: weights from the in-country bucket -> engine -> application.

A user applies a CPU stack (``sovereign_dev.datapath``: an Existing pool of the real node, an S3
store on the in-country MinIO, one ``engine: llama-cpp`` model ``chat`` and the chat-client
application) while the operator runs as a ``sovereign run`` process. Everything below runs in
real containers: the loader init container copies the GGUF file from the bucket, llama-server
loads it and passes its probes, the application asks the model by the Service DNS name the
operator put in its environment. Then the user swaps ``model:`` to another generated model and
the same application pod, untouched, gets its completions from the new one.

What is asserted is what a user sees: the stack's conditions, status and Events, pod states and
logs (``kubectl``), and HTTP answers through the Services (ClusterIPs are routable from here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sovereign.render import names
from sovereign_dev import engine
from sovereign_dev.cluster import DevCluster
from sovereign_dev.datapath import APPLICATION, MODEL, STACK, DataPath, ready as _ready
from sovereign_dev.pytest_plugin import REAL_NODE_REGION
from sovereign_dev.scenario import OperatorProcess, operating

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FIRST, SECOND = "tiny-llama-a", "tiny-llama-b"
WAIT = 300  # seconds; the machine is shared, and a cold containerd unpacks the images first


@pytest.fixture
def data_path(real_cluster: DevCluster, real_api_client, real_namespace: str,
              real_minio_servers) -> DataPath:
    path = DataPath(cluster=real_cluster, api=real_api_client, namespace=real_namespace,
                    store=real_minio_servers[REAL_NODE_REGION], models=(FIRST, SECOND))
    path.prepare()
    return path


@pytest.fixture
def operator(real_cluster: DevCluster, real_api_client, real_namespace: str, data_path: DataPath,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    with operating(real_cluster, real_api_client, real_namespace, log=tmp_path / "operator.log",
                   resync_seconds=3) as process:
        yield process


def _wait(what: str, predicate: Callable[[], Any], *, path: DataPath, operator: OperatorProcess,
          timeout: float = WAIT) -> Any:
    return path.wait(what, predicate, timeout=timeout, log_tail=operator.tail)


def _pods(path: DataPath, name: str, *, terminating: bool = False) -> list[client.V1Pod]:
    """The pods of the stack's Deployment ``name``; those being deleted only when ``terminating``."""
    selector = ",".join(f"{k}={v}" for k, v in client.AppsV1Api(path.api).read_namespaced_deployment(
        name, path.namespace).spec.selector.match_labels.items())
    return [p for p in client.CoreV1Api(path.api).list_namespaced_pod(path.namespace, label_selector=selector).items
            if terminating or p.metadata.deletion_timestamp is None]


def _true(conditions: dict[str, dict[str, Any]], *types: str) -> bool:
    return all(conditions.get(t, {}).get("status") == "True" for t in types)


def _served_by(path: DataPath, model: str) -> bool:
    """Only ``model`` is left to answer: the one model pod (an older one is gone altogether, so
    kube-proxy can route nowhere else) is annotated with it and Ready, and through the Service
    /v1/models names it beside the logical name and /props serves its file."""
    pods = _pods(path, MODEL, terminating=True)
    return (len(pods) == 1 and (pods[0].metadata.annotations or {}).get(names.MODEL_ID_ANNOTATION) == model
            and _ready(pods[0]) and sorted(path.served_models()) == sorted([MODEL, model])
            and path.props()["model_path"].endswith(f"/{model}.gguf"))


def _text_answer(path: DataPath, question: str, *, attempts: int = 5) -> dict[str, Any]:
    """The application's first answer with text in it. A random model samples its end-of-turn
    token first now and then (an empty completion, still an answer); a few tries give text."""
    answers = [path.ask(question) for _ in range(attempts)]
    with_text = [a for a in answers if a["answer"].strip()]
    assert with_text, f"{attempts} answers, none with text: {answers}"
    return with_text[0]


def _stack_events(path: DataPath) -> list[tuple[str, str]]:
    events = client.CoreV1Api(path.api).list_namespaced_event(
        path.namespace, field_selector=f"involvedObject.name={STACK},involvedObject.kind=SovereignStack").items
    return [(e.reason, e.message) for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]


def test_weights_flow_from_the_bucket_to_the_engine_to_the_application_and_a_model_swap_leaves_it_untouched(
        real_cluster: DevCluster, data_path: DataPath, operator: OperatorProcess) -> None:
    path = data_path
    core = client.CoreV1Api(path.api)

    path.apply(model=FIRST)
    _wait("the stack Ready", lambda: _true(path.conditions(), "Ready"), path=path, operator=operator)

    conditions = path.conditions()
    assert _true(conditions, "ModelsReady", "ApplicationsReady", "DataStoresReady", "ResidencyCompliant"), conditions
    (model_pod,) = _pods(path, MODEL)
    assert model_pod.spec.node_name == real_cluster.node.name, "the model runs on the real node, in a container"
    assert _ready(model_pod), "llama-server passed its startup and readiness probes"
    (loader,) = model_pod.status.init_container_statuses
    assert (loader.name, loader.state.terminated.exit_code, loader.state.terminated.reason) == (
        "fetch-model", 0, "Completed")
    key = engine.model_key(FIRST)
    copy_log = real_cluster.kubectl("logs", "-n", path.namespace, model_pod.metadata.name, "-c", "fetch-model")
    assert copy_log.returncode == 0, copy_log.stderr
    assert f"fetching s3://{path.bucket}/{key}" in copy_log.stdout, copy_log.stdout
    assert f"{FIRST}.gguf" in copy_log.stdout and "verified by" in copy_log.stdout, copy_log.stdout

    (app_pod,) = _pods(path, APPLICATION)
    assert app_pod.spec.node_name == real_cluster.node.name
    env = {e.name: e.value for e in app_pod.spec.containers[0].env}
    assert env["SOVEREIGN_MODEL_CHAT_URL"] == f"http://{MODEL}.{path.namespace}.svc:8000/v1"
    _wait("the application's first answer", lambda: path.ask("Say hello"), path=path, operator=operator, timeout=60)
    # The application knows the model by its logical name only; the text is the random model's.
    answer = _text_answer(path, "Say hello")
    assert answer["model"] == MODEL, answer
    assert sorted(path.served_models()) == sorted([MODEL, FIRST])
    status = path.stack()["status"]
    assert [(m["name"], m["model"], m["readyReplicas"]) for m in status["models"]] == [(MODEL, FIRST, 1)]
    assert status["models"][0]["endpoint"] == env["SOVEREIGN_MODEL_CHAT_URL"]
    app_generation = client.AppsV1Api(path.api).read_namespaced_deployment(APPLICATION, path.namespace).metadata.generation

    # The user edits model: and source.path in the YAML and applies it again.
    path.apply(model=SECOND)
    generation = path.stack()["metadata"]["generation"]
    _wait(f"{SECOND} serving behind {MODEL}, and the stack Ready again",
          lambda: (_served_by(path, SECOND) and path.stack()["status"].get("observedGeneration") == generation
                   and _true(path.conditions(), "Ready", "ModelsReady")),
          path=path, operator=operator)

    (new_model_pod,) = _pods(path, MODEL)
    assert new_model_pod.metadata.uid != model_pod.metadata.uid, "the model's replica was replaced"
    assert sorted(path.served_models()) == sorted([MODEL, SECOND])
    assert path.props()["model_path"] == f"/models/{MODEL}/{SECOND}.gguf"
    status = path.stack()["status"]
    assert [(m["name"], m["model"], m["readyReplicas"]) for m in status["models"]] == [(MODEL, SECOND, 1)]

    # The application was not touched: same pod, never restarted, its Deployment unchanged ...
    (same_app_pod,) = _pods(path, APPLICATION)
    assert same_app_pod.metadata.uid == app_pod.metadata.uid
    assert same_app_pod.status.container_statuses[0].restart_count == 0
    assert client.AppsV1Api(path.api).read_namespaced_deployment(
        APPLICATION, path.namespace).metadata.generation == app_generation
    # ... and it gets completions, now from the new model.
    answer = _text_answer(path, "Say hello again")
    assert answer["model"] == MODEL, answer
    app_log = real_cluster.kubectl("logs", "-n", path.namespace, same_app_pod.metadata.name).stdout
    assert f"answer model={MODEL} served_by={MODEL}" in app_log and "error model=" not in app_log, app_log

    # What `kubectl describe sstack` lists: Ready twice (first start, then after the swap), and
    # the swap itself as ModelsReady going False while the replica rolled, then True again.
    messages = [message for _, message in _stack_events(path)]
    assert sum(m.startswith("Ready is True") for m in messages) == 2, messages
    assert sum(m.startswith("ModelsReady is True") for m in messages) == 2, messages
    assert sum(m.startswith("ModelsReady is False") for m in messages) == 2, messages
    assert core.read_namespaced_pod(same_app_pod.metadata.name, path.namespace).status.phase == "Running"
