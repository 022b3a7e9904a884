"""A shared model cache the cluster cannot provide holds the model back; once it can, the cache is
filled before any replica starts.

Against the local control plane, a real MinIO server of me-central-1 and the operator as a real
``sovereign run`` process (its StorageClass index included): a CPU stack whose llama-cpp model
asks for ``cache.layout: SharedVolume`` on a block-storage class (provisioner
``ebs.csi.aws.com``, which serves no ReadWriteMany) runs no replica, creates no claim and no Job,
and reports ``ModelsReady=False`` and ``Stalled=True`` with reason
``CacheStorageClassNotReadWriteMany`` and a message naming ``spec.models[0].cache.layout``.
Once a cluster admin annotates the class ``sovereign.ai/access-modes: ReadWriteMany``, the next
pass creates the ReadWriteMany claim and its loader Job; the model's replica starts only after
the Job completed, mounting the claim read-only with no loader of its own, and the stack becomes
Ready. KWOK runs the pods (it completes a Job's pod at once; the real node's test copies real
weights), the local cloud's provisioner binds the claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gate_helpers import cpu_cloud, cpu_stack, operator, wait_for  # noqa: F401 - the fixture
from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign.api.models import RWX_ANNOTATION
from sovereign.policy import model_cache
from sovereign_dev.provisioner import SimulatedProvisioner
from sovereign_dev.scenario import SimulatedCloud, stack_conditions

STACK = "cpu"
KEY = "gguf/tiny.gguf"
pytestmark = pytest.mark.minio


@pytest.fixture
def cloud(api_client, namespace: str, minio_servers) -> Iterator[SimulatedCloud]:
    """A bucket holding the GGUF file, with its Secret, one CPU node of the fleet in the CPU pool's
    rack, and the local cloud's volume provisioner (which binds the cache's claim)."""
    provisioner = SimulatedProvisioner(api_client, region="me-central-1", interval=0.5)
    provisioner.start()
    try:
        with cpu_cloud(api_client, namespace, minio_servers["me-central-1"]) as simulated:
            simulated.store.client().put_object(Bucket=simulated.bucket, Key=KEY, Body=b"GGUF" + bytes(1024))
            yield simulated
    finally:
        provisioner.stop()


@pytest.fixture
def block_class(api_client, namespace: str) -> Iterator[str]:
    """A StorageClass of block volumes (ReadWriteOnce only), inside the allowed region."""
    storage = client.StorageV1Api(api_client)
    name = f"{namespace[:40]}-block"
    storage.create_storage_class({
        "metadata": {"name": name}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "Immediate",
        "allowedTopologies": [{"matchLabelExpressions": [{"key": "topology.kubernetes.io/region",
                                                          "values": ["me-central-1"]}]}]})
    yield name
    storage.delete_storage_class(name)


def _document(namespace: str, cloud: SimulatedCloud, storage_class: str) -> dict[str, Any]:
    return cpu_stack(name=STACK, namespace=namespace, cloud=cloud, key=KEY, applications=[],
                     cache={"size": "1Gi", "layout": "SharedVolume", "storageClassName": storage_class})


def _model_status(api_client, namespace: str) -> dict[str, Any]:
    stack = client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK)
    return ((stack.get("status") or {}).get("models") or [{}])[0]


def test_a_class_that_cannot_share_holds_the_model_back_until_an_admin_vouches_for_it(
        api_client, namespace, cloud, block_class, operator):
    core, batch, apps = client.CoreV1Api(api_client), client.BatchV1Api(api_client), client.AppsV1Api(api_client)
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _document(namespace, cloud, block_class))

    def stalled() -> bool:
        conditions = stack_conditions(api_client, namespace, STACK)
        return conditions.get("Stalled", {}).get("reason") == model_cache.CACHE_CLASS_NOT_SHARED

    wait_for("Stalled with CacheStorageClassNotReadWriteMany", stalled, operator, api_client, namespace, stack=STACK)

    conditions = stack_conditions(api_client, namespace, STACK)
    assert (conditions["ModelsReady"]["status"], conditions["ModelsReady"]["reason"]) == (
        "False", model_cache.CACHE_CLASS_NOT_SHARED)
    assert (f"spec.models[0].cache.layout SharedVolume needs a ReadWriteMany volume, and StorageClass "
            f"'{block_class}' (provisioner ebs.csi.aws.com) is not known to provision one") in (
        conditions["ModelsReady"]["message"])
    assert _model_status(api_client, namespace)["cache"]["state"] == "Unavailable"
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 0
    assert not batch.list_namespaced_job(namespace).items, "no loader Job for a cache that cannot be had"
    assert not core.list_namespaced_persistent_volume_claim(namespace).items

    client.StorageV1Api(api_client).patch_storage_class(
        block_class, {"metadata": {"annotations": {RWX_ANNOTATION: "ReadWriteMany"}}})

    def ready() -> bool:
        return stack_conditions(api_client, namespace, STACK).get("Ready", {}).get("status") == "True"

    wait_for("Ready once the class is vouched for", ready, operator, api_client, namespace, stack=STACK)
    (job,) = batch.list_namespaced_job(namespace).items
    (claim,) = core.list_namespaced_persistent_volume_claim(namespace).items
    assert job.metadata.name == claim.metadata.name and job.metadata.name.startswith("chat-cache-")
    assert claim.spec.access_modes == ["ReadWriteMany"] and claim.spec.storage_class_name == block_class
    assert job.status.succeeded == 1
    deployment = apps.read_namespaced_deployment("chat", namespace)
    assert deployment.spec.replicas == 1 and deployment.status.ready_replicas == 1
    template = deployment.spec.template.spec
    assert not template.init_containers, "the replica copies nothing: the Job filled the cache"
    weights = next(v for v in template.volumes if v.name == "weights")
    assert (weights.persistent_volume_claim.claim_name, weights.persistent_volume_claim.read_only) == (
        claim.metadata.name, True)
    cache = _model_status(api_client, namespace)["cache"]
    assert (cache["layout"], cache["name"], cache["state"]) == ("SharedVolume", claim.metadata.name, "Filled")
