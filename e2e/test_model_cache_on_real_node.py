"""A shared model cache on the real node: filled once by its loader Job, read by every replica.

A user applies the data-path CPU stack (``sovereign_dev.datapath``) with ``cache.layout:
SharedVolume`` on the local cloud's ReadWriteMany class (``provisioner.SHARED_CLASS``: a real
directory on the real node), while the operator runs as a ``sovereign run`` process. In real
containers: the loader Job copies the GGUF file from the in-country MinIO into the claim, and
only then does the model's Deployment appear; its replica mounts the claim read-only and
answers a completion. Scaling to two replicas reads nothing more of the weights from the
bucket: MinIO's own count of bytes sent (its metrics, read from outside every client) moves by
no more than the operator's periodic store checks. Deleting the stack keeps the claim (the
store's ``deletionPolicy`` is Retain). With ``cache.layout: PerNode`` the first replica's loader
fills a directory of the real node, and a second replica on the node finds it verified: its
loader downloads nothing.

What is asserted is what a user sees: the stack's status and conditions, the Job, pods and
claim (``kubectl``), HTTP answers through the Service, and the store's own metrics.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from sovereign.kube.client import Kube
from sovereign.render import names
from sovereign.render.cache import NODE_CACHE_ROOT
from sovereign_dev import engine
from sovereign_dev.cluster import DevCluster
from sovereign_dev.datapath import MODEL, STACK, DataPath, ModelResources, ready
from sovereign_dev.fleet import REAL_NODE_REGION
from sovereign_dev.provisioner import SHARED_CLASS, SimulatedProvisioner
from sovereign_dev.scenario import OperatorProcess, delete_stack, operating

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

WEIGHTS = "tiny-llama-a"
SHARED = {"layout": "SharedVolume", "storageClassName": SHARED_CLASS}
WAIT = 300  # seconds; the machine is shared, and a cold containerd unpacks the images first
#: The operator's store checks during the scale-up (a bucket's location, encryption and policy,
#: the first bytes of the GGUF file) send a few KiB; a copy of the weights would be megabytes.
STORE_CHECKS_AT_MOST = 64 * 1024


@pytest.fixture
def provisioner(real_cluster: DevCluster, real_api_client) -> Iterator[SimulatedProvisioner]:
    node = real_cluster.node
    assert node is not None
    provisioner = SimulatedProvisioner(real_api_client, region=REAL_NODE_REGION,
                                       real_node=(node.name, node.node_dir), interval=0.5)
    provisioner.start()
    yield provisioner
    provisioner.stop()


@pytest.fixture
def data_path(real_cluster: DevCluster, real_api_client, real_namespace: str, real_minio_servers,
              provisioner: SimulatedProvisioner) -> DataPath:
    # Half a CPU each: two replicas and the application fit the real node's two.
    path = DataPath(cluster=real_cluster, api=real_api_client, namespace=real_namespace,
                    store=real_minio_servers[REAL_NODE_REGION], models=(WEIGHTS,),
                    resources=ModelResources(cpu="500m", memory="1Gi", cache="1Gi"))
    path.prepare()
    return path


@pytest.fixture
def operator(real_cluster: DevCluster, real_api_client, real_namespace: str, data_path: DataPath,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    # A resync of 30 s: the store checks run once per resync, and fewer of them during the
    # scale-up keep the bucket's count of bytes sent about the replicas alone.
    with operating(real_cluster, real_api_client, real_namespace, log=tmp_path / "operator.log",
                   resync_seconds=30) as process:
        yield process


def _deployment(path: DataPath) -> client.V1Deployment | None:
    try:
        return client.AppsV1Api(path.api).read_namespaced_deployment(MODEL, path.namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def _cache_job(path: DataPath) -> client.V1Job | None:
    selector = f"{names.STACK_LABEL}={STACK},{names.COMPONENT_LABEL}={names.Component.MODEL_CACHE.value}"
    jobs = client.BatchV1Api(path.api).list_namespaced_job(path.namespace, label_selector=selector).items
    return jobs[0] if jobs else None


def test_the_weights_are_copied_once_into_a_shared_cache_and_a_second_replica_reads_none_of_them(
        real_cluster: DevCluster, data_path: DataPath, operator: OperatorProcess) -> None:
    path = data_path
    core = client.CoreV1Api(path.api)
    size = path.store.client().head_object(Bucket=path.bucket, Key=engine.model_key(WEIGHTS))["ContentLength"]

    path.apply(model=WEIGHTS, cache=SHARED)
    job = path.wait("the cache's loader Job", lambda: _cache_job(path), timeout=WAIT, log_tail=operator.tail)
    # No replica before the cache is filled: while the Job has not succeeded there is no Deployment.
    while not (job.status.succeeded or 0):
        assert _deployment(path) is None, "a Deployment exists before its cache was filled"
        time.sleep(0.2)
        job = _cache_job(path)
    path.wait("the stack Ready", lambda: path.conditions()["Ready"]["status"] == "True", timeout=WAIT,
              log_tail=operator.tail)
    first_token = path.wait_first_token(timeout=60)
    assert first_token

    deployment = _deployment(path)
    assert deployment.metadata.creation_timestamp >= job.status.completion_time.replace(microsecond=0)
    name = job.metadata.name
    claim = core.read_namespaced_persistent_volume_claim(name, path.namespace)
    assert claim.spec.access_modes == ["ReadWriteMany"] and claim.status.phase == "Bound"
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert volume.spec.host_path.path.startswith(str(real_cluster.node.node_dir)), "a real directory of the node"
    (pod,) = path.model_pods()
    assert pod.spec.node_name == real_cluster.node.name and not pod.spec.init_containers, "the replica copies nothing"
    weights = next(v for v in pod.spec.volumes if v.name == "weights")
    assert (weights.persistent_volume_claim.claim_name, weights.persistent_volume_claim.read_only) == (name, True)

    # The loader's log, as the operator reads a running one's progress (Kube.pod_log, the kubelet's).
    (filler,) = core.list_namespaced_pod(path.namespace, label_selector=f"job-name={name}").items
    kube = Kube(real_cluster.api_client())
    try:
        log = kube.pod_log(namespace=path.namespace, name=filler.metadata.name, container="fetch-model",
                           tail_lines=20)
    finally:
        kube.close()
    assert f"fetching s3://{path.bucket}/{engine.model_key(WEIGHTS)}" in log and "1 downloaded" in log, log

    cache = path.stack()["status"]["models"][0]["cache"]
    assert {k: cache[k] for k in ("layout", "name", "state", "files", "bytes", "downloadedBytes", "verified")} == {
        "layout": "SharedVolume", "name": name, "state": "Filled", "files": 1, "bytes": size,
        "downloadedBytes": size, "verified": True}
    assert cache["filledAt"]

    # Scale to two replicas: the second mounts the filled claim; the bucket sends no weights.
    sent_before = path.store.bytes_sent()
    path.apply(model=WEIGHTS, cache=SHARED, replicas=2)
    path.wait("two ready replicas", lambda: len(path.model_pods()) == 2 and all(map(ready, path.model_pods())),
              timeout=WAIT, log_tail=operator.tail)
    sent = path.store.bytes_sent() - sent_before
    assert sent <= STORE_CHECKS_AT_MOST < size, f"the store sent {sent} bytes while a replica was added"
    assert all(not p.spec.init_containers for p in path.model_pods())
    assert path.chat(content="hello", max_tokens=1)["choices"]

    # Deleting the stack keeps the cache (the store's deletionPolicy: Retain) for a stack made again.
    delete_stack(path.api, path.namespace, STACK)
    path.wait("the model's pods gone", lambda: not path.model_pods(), timeout=WAIT, log_tail=operator.tail)
    assert core.read_namespaced_persistent_volume_claim(name, path.namespace).metadata.deletion_timestamp is None


@pytest.fixture
def node_caches(real_namespace: str) -> Iterator[Path]:
    """The namespace's PerNode caches on the real node's disk, removed afterwards (they are the
    host's: nothing else would)."""
    root = Path(NODE_CACHE_ROOT) / real_namespace
    yield root
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):  # the root too, unless something else keeps caches there
        root.parent.rmdir()


def test_a_node_cache_is_filled_by_the_first_replica_and_the_next_one_on_the_node_copies_nothing(
        real_cluster: DevCluster, data_path: DataPath, operator: OperatorProcess, node_caches: Path) -> None:
    path = data_path
    size = path.store.client().head_object(Bucket=path.bucket, Key=engine.model_key(WEIGHTS))["ContentLength"]

    path.apply(model=WEIGHTS, cache={"layout": "PerNode"})
    path.wait("the stack Ready", lambda: path.conditions()["Ready"]["status"] == "True", timeout=WAIT,
              log_tail=operator.tail)
    (first,) = path.model_pods()
    directory = Path(next(v for v in first.spec.volumes if v.name == "weights").host_path.path)
    assert directory.parent.parent == node_caches, "under the namespace's and the stack's directory"
    assert (directory / MODEL / f"{WEIGHTS}.gguf").stat().st_size == size, "on the node's own disk"
    filled = real_cluster.kubectl("logs", "-n", path.namespace, first.metadata.name, "-c", "fetch-model").stdout
    assert "1 downloaded" in filled, filled

    sent_before = path.store.bytes_sent()
    path.apply(model=WEIGHTS, cache={"layout": "PerNode"}, replicas=2)
    path.wait("two ready replicas", lambda: len(path.model_pods()) == 2 and all(map(ready, path.model_pods())),
              timeout=WAIT, log_tail=operator.tail)
    sent = path.store.bytes_sent() - sent_before
    (second,) = [p for p in path.model_pods() if p.metadata.uid != first.metadata.uid]
    log = real_cluster.kubectl("logs", "-n", path.namespace, second.metadata.name, "-c", "fetch-model").stdout
    assert second.spec.node_name == first.spec.node_name == real_cluster.node.name
    assert f"present {WEIGHTS}.gguf" in log and "(1 skipped); 0 B downloaded" in log, log
    assert sent <= STORE_CHECKS_AT_MOST < size, f"the store sent {sent} bytes while a replica was added"
    assert path.chat(content="hello", max_tokens=1)["choices"]
