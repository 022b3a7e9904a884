"""Pytest fixtures for tests that need the local control plane.

Loaded for every test run through the ``pytest11`` entry point of ``pyproject.toml``:
``cluster`` (one DevCluster per session, started on first use), ``api_client`` and ``namespace``
(a fresh namespace per test, deleted afterwards), and the MinIO fixtures of
``minio_fixtures`` (``minio_servers``: one real MinIO per region). Tests that use them get the ``cluster`` marker,
so ``-m "not cluster"`` runs the pure tests alone. ``real_cluster`` is a second control plane
with a real node in me-central-1 (kubelet, containerd, kube-proxy, CoreDNS; the ``base`` image
imported), ``real_api_client`` and ``real_namespace`` its counterparts, ``real_minio_servers``
MinIO per region bound where the node's pods reach it; their tests also get the ``realnode``
marker (needs root). The ``gpu`` marker skips tests unless NVML
finds a GPU.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from sovereign_dev import fleet
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.minio import DEFAULT_REGIONS, MinioFleet, MinioServer
from sovereign_dev.minio_fixtures import *  # noqa: F403 - minio_servers and friends
from sovereign_dev.minio_fixtures import mark_minio_items

_REAL_NODE_FIXTURES = {"real_cluster", "real_api_client", "real_namespace", "real_minio_servers"}
_CLUSTER_FIXTURES = {"cluster", "api_client", "namespace", *_REAL_NODE_FIXTURES}
REAL_NODE_REGION = fleet.REAL_NODE_REGION


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_minio_items(items)
    has_gpu = _nvml_has_gpu() if any("gpu" in item.keywords for item in items) else False
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
        if _REAL_NODE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realnode)
        if "real_minio_servers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.minio)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU visible to NVML on this machine"))


def _nvml_has_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library or no device: all mean "no GPU"
        return False


def _running(dev: DevCluster) -> Iterator[DevCluster]:
    """Start ``dev``, hand it over, stop it; its etcd data go unless SOVEREIGN_KEEP_CLUSTER is set."""
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
        if not os.environ.get("SOVEREIGN_KEEP_CLUSTER"):
            shutil.rmtree(dev.workdir / "etcd", ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    yield from _running(DevCluster(workdir=tmp_path_factory.mktemp("devcluster"), progress=True))


@pytest.fixture(scope="session")
def api_client(cluster: DevCluster):
    client = cluster.api_client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """The fleet plus a real node in ``REAL_NODE_REGION``: its pods run in real containers.

    Pods reach host services at ``real_cluster.pod_reachable_host``. One per test module, not
    per session: a machine has one real node at a time (a host lock), and a later module (such
    as an end-to-end run of ``sovereign dev up``) may need to start its own. At the end the node
    must leave nothing on the host; what it left fails the module's last test.
    """
    dev = DevCluster(workdir=tmp_path_factory.mktemp("realcluster"), progress=True, real_node=REAL_NODE_REGION,
                     real_node_images=("base",))
    yield from _running(dev)
    left = dev.node.leftovers() if dev.node else []
    assert not left, f"the real node left these behind on the host: {left}"


@pytest.fixture(scope="module")
def real_minio_servers(real_cluster: DevCluster,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MinioServer]]:
    """region -> a MinIO server bound to the real node's gateway, reachable from its pods and
    from this machine alike (``server.endpoint``)."""
    with MinioFleet(root=tmp_path_factory.mktemp("minio-real"), regions=DEFAULT_REGIONS,
                    host=real_cluster.pod_reachable_host) as fleet:
        yield fleet.servers


@pytest.fixture(scope="module")
def real_api_client(real_cluster: DevCluster):
    client = real_cluster.api_client()
    yield client
    client.close()


@pytest.fixture
def namespace(api_client, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _test_namespace(api_client, request)


@pytest.fixture
def real_namespace(real_api_client, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _test_namespace(real_api_client, request)


def _test_namespace(api_client, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-").strip("-")
    core.create_namespace({"metadata": {"name": name, "labels": {"sovereign.ai/test": "true"}}})
    # Pod admission needs the namespace's default ServiceAccount, made by the controller-manager.
    wait_until(lambda: core.read_namespaced_service_account("default", name), timeout=60,
               message=f"ServiceAccount {name}/default")
    yield name
    core.delete_namespace(name, propagation_policy="Background")
