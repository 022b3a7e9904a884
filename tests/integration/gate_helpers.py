"""Shared by the tests where the operator holds a model back until a store (or the cluster) is
fixed (``test_residency_store_gate``, ``test_model_file_gate``, ``test_model_cache_gate``): the
operator as a ``sovereign run`` subprocess with a short resync (the stores' re-check period), and
a wait that fails with the stack's conditions and the operator's log; for the CPU stacks, a
``SimulatedCloud`` with one CPU node of the fleet in the CPU pool's rack (``cpu_cloud``) and the
stack (``cpu_stack``). Import ``operator`` into the test module; it needs the module's own
``cloud`` fixture (a ``SimulatedCloud``) and its stack's name in ``STACK``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from sovereign.api import GROUP, VERSION
from sovereign_dev.scenario import RACK_LABEL, OperatorProcess, SimulatedCloud, delete_stack, stack_conditions

RESYNC = 3  # seconds: the operator's resync, and so the stores' re-check period, in these tests
WAIT = 240  # seconds; generous, the machine is shared


@pytest.fixture
def operator(cluster, api_client, namespace: str, cloud: SimulatedCloud, tmp_path,
             request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace], log=tmp_path / "operator.log",
                              resync_seconds=RESYNC).start()
    yield process
    try:
        delete_stack(api_client, namespace, request.module.STACK)  # the finalizer releases the node
    finally:
        process.stop()


def wait_for(what: str, predicate: Callable[[], Any], operator: OperatorProcess, api_client, namespace: str,
             *, stack: str) -> Any:
    """Poll ``predicate``; on timeout fail with the stack's conditions and the operator's log."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    conditions = {k: (v["status"], v["reason"], v["message"])
                  for k, v in stack_conditions(api_client, namespace, stack).items()}
    pytest.fail(f"timed out after {WAIT}s waiting for {what}\nconditions: {conditions}\n"
                f"operator log:\n{operator.tail()}")


CPU_NODE = "cpu-mec1-0"
CPU_RACK = "doha-cpu"


@contextlib.contextmanager
def cpu_cloud(api_client, namespace: str, store) -> Iterator[SimulatedCloud]:
    """Volumes for the weights cache, a bucket with its Secret, and one CPU node of the fleet in
    rack doha-cpu (the CPU pool's selector)."""
    core = client.CoreV1Api(api_client)
    with SimulatedCloud(api_client, namespace, store=store) as simulated:
        core.patch_node(CPU_NODE, {"metadata": {"labels": {RACK_LABEL: CPU_RACK}}})
        try:
            yield simulated
        finally:
            core.patch_node(CPU_NODE, {"metadata": {"labels": {RACK_LABEL: None}}})


def cpu_stack(*, name: str, namespace: str, cloud: SimulatedCloud, key: str, cache: dict[str, Any],
              applications: list[dict[str, Any]]) -> dict[str, Any]:
    """A CPU stack: the rack's pool, the cloud's bucket as store, one llama-cpp model ``chat``
    serving ``key`` with ``cache``, and ``applications``."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "residency": {"jurisdiction": "QA", "regions": ["me-central-1"]},
            "nodePools": [{"name": "cpu", "provisioner": "Existing",
                           "existing": {"nodeSelector": {RACK_LABEL: CPU_RACK}}}],
            "dataStores": [{"name": "weights", "s3": {
                "bucket": cloud.bucket, "region": "me-central-1", "endpoint": cloud.store.endpoint,
                "forcePathStyle": True, "credentialsSecretRef": {"name": "s3-creds"}}}],
            "models": [{"name": "chat", "engine": "llama-cpp", "model": "tiny", "nodePool": "cpu",
                        "source": {"dataStore": "weights", "path": key},
                        "resources": {"cpu": "2", "memory": "1Gi"}, "cache": cache}],
            "applications": applications,
        },
    }
