"""The pure parts of the GPU reaction: reading a node's GPU health back, choosing the pods to
evict, and when a stack's status pass and its evictions are due. Evicting itself is tested
against the apiserver in tests/integration/test_gpu_reaction.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sovereign.api import ConditionStatus, load_documents
from sovereign.kube.nodes import GPU_HEALTH_ANNOTATION, GpuHealthRecord, GpuRecord
from sovereign.policy.gpu_health import HealthState
from sovereign.policy.stack_gpu_health import GpuFault, NodeGpus, assess_stack_gpus
from sovereign.render.facts import ClusterFacts, NodeFacts
from sovereign.services.gpu_reaction import (
    RECHECK_SECONDS,
    RETRY_SECONDS,
    EvictionReport,
    GpuReaction,
    node_gpus,
    pods_to_evict,
)

UUID3 = "GPU-00000003-aaaa-bbbb-cccc-dddddddddddd"
MINIMAL = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "minimal.yaml"


def gpu_node(*, condition: dict[str, str] | None = None, record: GpuHealthRecord | str | None = None,
             allocatable: str | None = "8") -> dict[str, Any]:
    """A KWOK GPU node as the apiserver returns it, with what a node agent wrote."""
    annotations = {}
    if record is not None:
        annotations[GPU_HEALTH_ANNOTATION] = record if isinstance(record, str) else record.to_annotation()
    conditions = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
    if condition:
        conditions.append({"type": "GPUHealthy", **condition})
    return {"metadata": {"name": "gpu-mec1-3", "annotations": annotations,
                         "labels": {"topology.kubernetes.io/region": "me-central-1"}},
            "status": {"conditions": conditions,
                       "allocatable": {"nvidia.com/gpu": allocatable} if allocatable else {}}}


def test_node_gpus_reads_what_the_agent_wrote():
    gpus = tuple(GpuRecord(index=i, uuid=f"GPU-{i}", state="Healthy", reason="Healthy", message="no faults")
                 for i in range(8))
    gpus = (*gpus[:2], GpuRecord(index=2, uuid="GPU-2", state="Degraded", reason="ThermalSlowdown",
                                 message="hot"),
            GpuRecord(index=3, uuid=UUID3, state="Unhealthy", reason="Xid79", message="off the bus",
                      fatal=True), *gpus[4:])
    node = gpu_node(condition={"status": "False", "reason": "Xid79OnGPU3", "message": "7 of 8"},
                    record=GpuHealthRecord(state="Unhealthy", healthy=6, total=8, gpus=gpus))

    assert node_gpus(node) == NodeGpus(
        name="gpu-mec1-3", region="me-central-1", gpus=8, condition=ConditionStatus.FALSE,
        reason="Xid79OnGPU3",
        faults=(GpuFault(index=2, uuid="GPU-2", state=HealthState.DEGRADED, reason="ThermalSlowdown"),
                GpuFault(index=3, uuid=UUID3, state=HealthState.UNHEALTHY, reason="Xid79", fatal=True)))
    assert node_gpus(node).fatal


def test_a_node_without_agent_has_no_condition_and_no_faults():
    assert node_gpus(gpu_node(allocatable=None)) == NodeGpus(name="gpu-mec1-3", region="me-central-1")


def test_an_unreadable_record_leaves_only_the_condition():
    node = gpu_node(condition={"status": "False", "reason": "Xid79OnGPU3"}, record="{not json")

    read = node_gpus(node)

    assert (read.condition, read.reason, read.faults, read.fatal) == (
        ConditionStatus.FALSE, "Xid79OnGPU3", (), False)


# -- pods to evict --------------------------------------------------------------------------------

SICK = NodeGpus(name="gpu-mec1-3", condition=ConditionStatus.FALSE, gpus=8,
                faults=(GpuFault(index=3, uuid=UUID3, state=HealthState.UNHEALTHY, reason="Xid79",
                                 fatal=True),))


def pod(name: str, *, node: str = "gpu-mec1-3", component: str = "inference", owner: str | None = "ReplicaSet",
        phase: str = "Running", terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "gov-qa", "uid": f"uid-{name}",
                            "labels": {"app.kubernetes.io/component": component,
                                       "sovereign.ai/stack": "citizen-services"}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": f"{name}-rs", "controller": True}]
    if terminating:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


def test_only_running_inference_pods_of_a_deployment_on_a_fatal_node_are_evicted():
    pods = [pod("chat-b"), pod("chat-a"),
            pod("chat-elsewhere", node="gpu-mec1-0"),
            pod("assistant", component="application"),
            pod("chat-leaving", terminating=True),
            pod("chat-done", phase="Succeeded"),
            pod("bare", owner=None),
            pod("job-pod", owner="Job")]

    chosen = pods_to_evict(pods=pods, fatal={SICK.name: SICK})

    assert [p["metadata"]["name"] for p in chosen] == ["chat-a", "chat-b"]


def test_a_pending_pod_has_no_node_and_is_left_alone():
    pending = pod("chat-pending")
    del pending["spec"]["nodeName"]

    assert pods_to_evict(pods=[pending], fatal={SICK.name: SICK}) == []


# -- when passes and evictions are due --------------------------------------------------------------

HEALTHY = assess_stack_gpus(pools=[("h100", [NodeGpus(name="gpu-mec1-3", condition=ConditionStatus.TRUE,
                                                      gpus=8)])])
FATAL = assess_stack_gpus(pools=[("h100", [SICK])])


def test_a_status_pass_is_due_until_one_has_shown_the_health():
    reaction = GpuReaction()

    assert reaction.status_due(HEALTHY)  # nothing shown yet (an operator that just started)
    reaction.status_shown(HEALTHY)
    assert not reaction.status_due(HEALTHY)
    assert reaction.status_due(FATAL)
    reaction.status_shown(FATAL)
    assert not reaction.status_due(FATAL)


def test_a_fatal_node_is_looked_at_once_then_only_every_recheck_period():
    reaction = GpuReaction()

    assert not reaction.evictions_due(HEALTHY, now=0)
    assert reaction.evictions_due(FATAL, now=0)
    reaction.looked(FATAL, EvictionReport(evicted=("chat-a",)), now=0)
    assert not reaction.evictions_due(FATAL, now=RECHECK_SECONDS - 1)
    assert reaction.evictions_due(FATAL, now=RECHECK_SECONDS)


def test_pods_a_budget_protects_are_tried_again_soon():
    reaction = GpuReaction()

    reaction.looked(FATAL, EvictionReport(evicted=("chat-a",), blocked=("chat-b",)), now=0)

    assert not reaction.evictions_due(FATAL, now=RETRY_SECONDS - 1)
    assert reaction.evictions_due(FATAL, now=RETRY_SECONDS)


def test_another_fatal_node_is_looked_at_at_once():
    reaction = GpuReaction()
    reaction.looked(FATAL, EvictionReport(evicted=("chat-a",)), now=0)
    both = assess_stack_gpus(pools=[("h100", [SICK, NodeGpus(
        name="gpu-mec1-4", condition=ConditionStatus.FALSE, gpus=8, faults=SICK.faults)])])

    assert reaction.evictions_due(both, now=1)


def test_a_node_fatal_again_after_recovering_is_looked_at_at_once():
    reaction = GpuReaction()
    reaction.looked(FATAL, EvictionReport(evicted=("chat-a",)), now=0)

    assert not reaction.evictions_due(HEALTHY, now=1)
    assert reaction.evictions_due(FATAL, now=2)


# -- the health a stack's check computes ------------------------------------------------------------

def minimal_stack(**spec_changes: Any) -> dict[str, Any]:
    (document,) = load_documents(MINIMAL.read_text())
    document["metadata"] |= {"namespace": "gov-qa", "uid": "uid-1", "generation": 1}
    document["spec"] |= spec_changes
    return document


def pool_node(name: str, gpu: NodeGpus) -> NodeFacts:
    """A node the minimal sample's Existing pool picks: the GPU product, in me-central-1."""
    return NodeFacts(name, {"topology.kubernetes.io/region": "me-central-1",
                            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, ready=True, gpu=gpu)


def test_the_check_judges_the_nodes_of_the_stacks_pools():
    facts = ClusterFacts(nodes=(pool_node("gpu-mec1-3", SICK),
                                NodeFacts("cpu-mec1-0", {"topology.kubernetes.io/region": "me-central-1"})))

    health = GpuReaction().health(body=minimal_stack(), facts=facts)

    assert (health.status, health.reason) == (ConditionStatus.FALSE, "GPUsUnhealthy")
    assert health.fatal_nodes == (SICK,)
    assert [(p.name, p.nodes, p.gpus, p.unhealthy_gpus) for p in health.pools] == [("gpu", 1, 8, 1)]


def test_a_spec_the_rules_reject_has_no_gpu_health_to_act_on():
    invalid = minimal_stack(residency={"jurisdiction": "QA", "regions": []})

    assert GpuReaction().health(body=invalid, facts=ClusterFacts()) is None
