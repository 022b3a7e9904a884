"""The NodePool the operator renders, acted on by the real Karpenter (its KWOK cloud provider).

``DevCluster`` runs Karpenter with the local cloud's instance types (``fleet.yaml``: 8x H100,
8x A100, 4x L40S and CPU types in every zone of both regions). The NodePool here is the one
``render.nodepool`` makes of the full sample's h100 pool, pointed at the local node class; the
pods are the pods of the chat model's rendered Deployment (its weights volume replaced by an
emptyDir, its loader left out: no bucket is needed to ask for GPUs). Karpenter launches nodes
for them within the pool's limit and, once they are empty, gives the nodes back; the GPU pin
refuses an instance type of another GPU, where a pool pinned only by ``gpu.product`` (what the
operator rendered before) gets the cheapest GPU labelled as the one it asked for.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from sovereign.render.facts import ClusterFacts
from sovereign.render.nodepool import render_node_pool
from sovereign_dev.cluster import wait_until
from sovereign_dev.fleet import KWOK_GPU_NAME_LABEL
from sovereign_dev.scenario import local_stack, weightless_deployment

NODEPOOL_LABEL = "karpenter.sh/nodepool"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
GPU_PRODUCT = "nvidia.com/gpu.product"
#: Long enough for a launch (Karpenter batches pending pods for 1 to 10 s) and a consolidation
#: (consolidateAfter below, then Karpenter's disruption pass, every 10 s, and the node's drain).
WAIT = 150


@pytest.fixture
def nodepool(api_client, namespace: str) -> Iterator[dict[str, Any]]:
    """The rendered NodePool of the h100 pool (limit: two 8-GPU nodes), created, then deleted
    with whatever nodes it still has."""
    stack = local_stack(namespace, gpus_limit=16, consolidate_after="5s")
    (rendered,) = render_node_pool(stack=stack, pool=stack.spec.node_pools[0], facts=ClusterFacts())
    custom = client.CustomObjectsApi(api_client)
    custom.create_cluster_custom_object("karpenter.sh", "v1", "nodepools", rendered)
    yield rendered
    custom.delete_cluster_custom_object("karpenter.sh", "v1", "nodepools", rendered["metadata"]["name"])
    wait_until(lambda: not _pool_nodes(api_client, rendered), timeout=WAIT, message="the pool's nodes to go")


def _pool_nodes(api_client, nodepool: dict[str, Any]) -> list[client.V1Node]:
    selector = f"{NODEPOOL_LABEL}={nodepool['metadata']['name']}"
    return client.CoreV1Api(api_client).list_node(label_selector=selector).items


def _chat_deployment(namespace: str, *, replicas: int) -> dict[str, Any]:
    """The chat model's rendered Deployment (4 GPUs a replica, the pool's affinity), weightless."""
    return weightless_deployment(local_stack(namespace, gpus_limit=16), "chat", replicas=replicas)


def _pods(api_client, namespace: str) -> list[client.V1Pod]:
    return client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/name=chat").items


def test_a_pool_gets_nodes_for_pending_gpu_pods_within_its_limit_and_gives_them_back(
        api_client, namespace: str, nodepool: dict[str, Any]) -> None:
    apps = client.AppsV1Api(api_client)
    # Five replicas of 4 GPUs want three 8-GPU nodes; the pool's limit (16 GPUs) allows two.
    apps.create_namespaced_deployment(namespace, _chat_deployment(namespace, replicas=5))

    def running() -> list[client.V1Pod]:
        return [p for p in _pods(api_client, namespace) if p.status.phase == "Running"]

    wait_until(lambda: len(running()) == 4, timeout=WAIT, message="four chat pods Running on Karpenter's nodes")
    nodes = _pool_nodes(api_client, nodepool)
    assert len(nodes) == 2, "the limit of 16 GPUs holds the pool at two 8-GPU nodes"
    for node in nodes:
        labels = node.metadata.labels
        assert labels[INSTANCE_TYPE] == "gpu-h100-8x"
        assert labels[KWOK_GPU_NAME_LABEL] == "h100"
        assert labels["topology.kubernetes.io/region"] == "me-central-1"
        assert labels["topology.kubernetes.io/zone"].startswith("me-central-1")
        assert {t.key for t in node.spec.taints or []} >= {"nvidia.com/gpu"}
    pending = [p for p in _pods(api_client, namespace) if p.status.phase == "Pending"]
    assert len(pending) == 1, "the fifth replica waits: the pool is at its limit"
    # The model servers request CPU and memory besides their GPUs (never BestEffort).
    assert {p.status.qos_class for p in running()} == {"Burstable"}

    apps.patch_namespaced_deployment_scale("chat", namespace, {"spec": {"replicas": 0}})
    wait_until(lambda: not _pool_nodes(api_client, nodepool), timeout=WAIT,
               message="Karpenter to consolidate the empty nodes away")


def test_the_gpu_pin_refuses_an_instance_type_of_another_gpu(api_client, namespace: str,
                                                             nodepool: dict[str, Any]) -> None:
    """A replica that asks the pinned pool for an A100 instance is never given a node."""
    deployment = _chat_deployment(namespace, replicas=1)
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    terms[0]["matchExpressions"].append({"key": INSTANCE_TYPE, "operator": "In", "values": ["gpu-a100-8x"]})
    client.AppsV1Api(api_client).create_namespaced_deployment(namespace, deployment)
    core = client.CoreV1Api(api_client)

    def refused() -> list[str]:
        (pod,) = _pods(api_client, namespace)
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
        return [e.message for e in events.items if e.reason == "FailedScheduling"
                and e.message.startswith("Failed to schedule pod, no instance type met all requirements")]

    (message, *_) = wait_until(refused, timeout=WAIT, message="Karpenter's refusal on the pod")
    assert f"{KWOK_GPU_NAME_LABEL} In [h100]" in message and f"{INSTANCE_TYPE} In [gpu-a100-8x]" in message
    assert not _pool_nodes(api_client, nodepool)
    assert [p.status.phase for p in _pods(api_client, namespace)] == ["Pending"]


def test_without_the_pin_karpenter_labels_the_cheapest_gpus_as_the_product_asked_for(api_client,
                                                                                   namespace: str) -> None:
    """Why the pin exists: a NodePool that only requires nvidia.com/gpu.product (what the
    operator rendered before) gets the cheapest type with the GPUs a replica asks for (a 4x
    L40S for the chat model's 4), labelled H100."""
    stack = local_stack(namespace, gpus_limit=16)
    (unpinned,) = render_node_pool(stack=stack, pool=stack.spec.node_pools[0], facts=ClusterFacts())
    unpinned["metadata"]["name"] = f"unpinned-{uuid.uuid4().hex[:8]}"
    requirements = unpinned["spec"]["template"]["spec"]["requirements"]
    requirements[:] = [r for r in requirements if r["key"] != KWOK_GPU_NAME_LABEL]
    custom = client.CustomObjectsApi(api_client)
    custom.create_cluster_custom_object("karpenter.sh", "v1", "nodepools", unpinned)
    try:
        deployment = _chat_deployment(namespace, replicas=1)
        expressions = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
        for expression in expressions:
            if expression["key"] == NODEPOOL_LABEL:
                expression["values"] = [unpinned["metadata"]["name"]]
        client.AppsV1Api(api_client).create_namespaced_deployment(namespace, deployment)

        # Running: the node registered (a NodePool deleted before its node registers orphans the node).
        (pod,) = wait_until(lambda: [p for p in _pods(api_client, namespace) if p.status.phase == "Running"],
                            timeout=WAIT, message="the chat pod Running on a node of the unpinned pool")
        (node,) = _pool_nodes(api_client, unpinned)
        assert pod.spec.node_name == node.metadata.name
        assert node.metadata.labels[GPU_PRODUCT] == "NVIDIA-H100-80GB-HBM3"
        assert node.metadata.labels[KWOK_GPU_NAME_LABEL] == "l40s"
        assert node.metadata.labels[INSTANCE_TYPE] == "gpu-l40s-4x"
    finally:
        with contextlib.suppress(client.ApiException):
            client.AppsV1Api(api_client).delete_namespaced_deployment("chat", namespace)
        custom.delete_cluster_custom_object("karpenter.sh", "v1", "nodepools", unpinned["metadata"]["name"])
        wait_until(lambda: not _pool_nodes(api_client, unpinned), timeout=WAIT, message="the unpinned pool's node to go")
