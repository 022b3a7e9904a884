"""The model servers' metrics, end to end on the real node: what the operator renders and
documents for scraping gives Prometheus the series its autoscaler query asks for.

A CPU stack (``sovereign_dev.datapath``: one ``engine: llama-cpp`` model ``chat`` started with
``--metrics``) runs in real containers while the operator runs as a ``sovereign run`` process. A
real Prometheus (Debian's package, ``sovereign_dev.prometheus``) with the README's
``kubernetes_sd_configs`` pod-role job (``render.monitoring.scrape_job``; Debian's build lacks
Kubernetes discovery, so the harness lists the pods as that discovery would and the job's
relabelling runs unchanged) keeps the model's pod, scrapes llama-server's ``/metrics`` on its
``http`` port, and
answers the queue query built the way the ScaledObject's is (``render.monitoring.queue_query``,
with llama-server's gauge: autoscaling itself is for vLLM models only) with one series of the
stack's model. The PodMonitor the operator applied beside it selects that same pod; no
Prometheus Operator runs here to act on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from sovereign.api import parse_stack
from sovereign.render import monitoring
from sovereign_dev.cluster import DevCluster
from sovereign_dev.datapath import MODEL, STACK, DataPath, ready
from sovereign_dev.prometheus import PrometheusServer
from sovereign_dev.pytest_plugin import REAL_NODE_REGION
from sovereign_dev.scenario import OperatorProcess, operating

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GGUF = "tiny-llama-a"
WAIT = 300  # seconds; the machine is shared, and a cold containerd unpacks the images first


@pytest.fixture
def data_path(real_cluster: DevCluster, real_api_client, real_namespace: str, real_minio_servers) -> DataPath:
    path = DataPath(cluster=real_cluster, api=real_api_client, namespace=real_namespace,
                    store=real_minio_servers[REAL_NODE_REGION], models=(GGUF,))
    path.prepare()
    return path


@pytest.fixture
def operator(real_cluster: DevCluster, real_api_client, real_namespace: str, data_path: DataPath,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    with operating(real_cluster, real_api_client, real_namespace, log=tmp_path / "operator.log",
                   resync_seconds=3) as process:
        yield process


def test_prometheus_with_the_documented_job_answers_the_models_queue_query(
        real_cluster: DevCluster, data_path: DataPath, operator: OperatorProcess, tmp_path: Path) -> None:
    path = data_path
    path.apply(model=GGUF)
    path.wait("the stack Ready", lambda: path.conditions().get("Ready", {}).get("status") == "True",
              timeout=WAIT, log_tail=operator.tail)
    (pod,) = path.model_pods()
    assert ready(pod)

    # The operator's PodMonitor selects exactly this pod, on the port llama-server serves /metrics on.
    monitor = client.CustomObjectsApi(path.api).get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", path.namespace, "podmonitors", MODEL)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod.metadata.labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port.name for port in pod.spec.containers[0].ports}

    stack = parse_stack(path.document(model=GGUF))
    query = monitoring.queue_query(stack=stack, model=stack.spec.models[0])
    with PrometheusServer(root=tmp_path / "prometheus", namespaces=[path.namespace]) as prometheus:
        prometheus.discover(path.api)
        up = path.wait("Prometheus scraping the model's pod", lambda: prometheus.query(
            f'up{{job="sovereign-models",pod="{pod.metadata.name}"}} == 1'), timeout=60,
            log_tail=lambda: f"targets: {prometheus.targets()}\n{prometheus.log_tail()}")
        (target,) = up
        assert {key: target["metric"][key] for key in ("namespace", "stack", "model")} == {
            "namespace": path.namespace, "stack": STACK, "model": MODEL}

        answer = path.wait(f"an answer to {query}", lambda: prometheus.query(query), timeout=30,
                           log_tail=prometheus.log_tail)
        (series,) = answer
        assert float(series["value"][1]) == 0.0, "nobody asked the model anything: nothing waits"
        (raw,) = prometheus.query(f'{monitoring.QUEUE_METRICS[stack.spec.models[0].engine]}'
                                  f'{{namespace="{path.namespace}"}}')
        assert raw["metric"]["pod"] == pod.metadata.name
        # Only the model's pods are targets: not the application, not the loader.
        assert {t["labels"].get("pod") for t in prometheus.targets()} == {pod.metadata.name}
