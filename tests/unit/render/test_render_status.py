"""Status from observed children: conditions, reasons, Ready, per-model endpoints, transition times;
and the part of the status the residency audit owns, read but never written."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from render_inputs import stack_from  # next to this file

from sovereign.api import Condition, ConditionStatus, DataStoreStatus, ResidencyViolation, SovereignStackStatus
from sovereign.policy.gpu_health import HealthState
from sovereign.policy.stack_gpu_health import GpuFault
from sovereign.render.facts import ClusterFacts, Hold
from sovereign.render.names import ObjectKey
from sovereign.render.stack import render_stack
from sovereign.render.status import Observation, compute_status, invalid_status, reconciler_part

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
#: The full sample's S3 store as the reconciler verifies a compliant bucket.
COMPLIANT = {"corpus": DataStoreStatus(name="corpus", ready=True, location="s3://qa-corpus", region="me-central-1",
                                       reason="Compliant", message="every residency check passed")}


def _available(obj: dict) -> dict:
    """``obj`` as the cluster shows it once it has settled: Deployments available, claims bound,
    NodePools Ready."""
    live = {**obj, "metadata": {**obj["metadata"], "generation": 1}}
    if obj["kind"] == "Deployment":
        want = obj["spec"].get("replicas", 1)
        live["status"] = {"observedGeneration": 1, "replicas": want, "updatedReplicas": want,
                          "readyReplicas": want, "availableReplicas": want}
    elif obj["kind"] == "PersistentVolumeClaim":
        live["status"] = {"phase": "Bound"}
        live["spec"] = {**obj["spec"], "volumeName": "pv-1"}
    elif obj["kind"] == "NodePool":
        live["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    return live


def _children(stack, facts, change=None) -> dict[ObjectKey, dict]:
    children = {}
    for obj in render_stack(stack, facts):
        live = _available(obj)
        if change:
            live = change(live)
        if live is not None:
            key = ObjectKey(obj["apiVersion"].rpartition("/")[0], obj["kind"], obj["metadata"].get("namespace", ""),
                            obj["metadata"]["name"])
            children[key] = live
    return children


def _status(stack, facts, children, previous=None, now=NOW, stores=COMPLIANT, rejected=()):
    observation = Observation(children=children, rejected=rejected)
    return compute_status(stack=stack, facts=replace(facts, data_stores=stores), observation=observation,
                          previous=previous, now=now)


def _conditions(status) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_settled_stack_is_ready_with_endpoints_and_summary(full_stack, facts) -> None:
    status = _status(full_stack, facts, _children(full_stack, facts))

    assert _conditions(status) == {
        "Ready": ("True", "StackReady"),
        "NodePoolsReady": ("True", "NodePoolsReady"),
        "DataStoresReady": ("True", "DataStoresReady"),
        "ModelsReady": ("True", "ModelsAvailable"),
        "ApplicationsReady": ("True", "ApplicationsAvailable"),
        "GPUHealthy": ("Unknown", "NoHealthReports"),
        "Reconciling": ("False", "StackReady"),
        "Stalled": ("False", "StackReady"),
    }
    assert status.observed_generation == 1
    assert status.models_ready == "2/2"
    chat = next(m for m in status.models if m.name == "chat")
    assert (chat.endpoint, chat.model, chat.ready_replicas) == ("http://chat.gov-qa.svc:8000/v1",
                                                                "Qwen/Qwen2.5-72B-Instruct", 1)
    onprem = next(p for p in status.node_pools if p.name == "onprem")
    assert (onprem.nodes, onprem.gpus) == (2, 16)


def test_each_pool_says_which_gpu_and_instance_types_its_nodes_really_have(full_stack, facts) -> None:
    """A Karpenter pool's GPU comes from the provider's GPU-name label (set from the instance),
    not from gpu.product (which Karpenter copies from the NodePool onto any instance)."""
    status = _status(full_stack, facts, _children(full_stack, facts))
    pools = {p.name: p for p in status.node_pools}

    assert (pools["h100"].instance_types, pools["h100"].gpu_names) == (["p5.48xlarge"], ["h100"])
    assert (pools["onprem"].instance_types, pools["onprem"].gpu_names) == (["dgx-h100"], ["NVIDIA-H100-80GB-HBM3"])
    ready = next(c for c in status.conditions if c.type == "NodePoolsReady")
    assert "h100: 2 node(s), 16 GPU(s) (h100)" in ready.message


def test_models_ready_follows_deployment_availability(full_stack, facts) -> None:
    def loading(live):
        if live["kind"] == "Deployment" and live["metadata"]["name"] == "chat":
            live["status"] = {**live["status"], "readyReplicas": 0, "availableReplicas": 0}
        return live

    status = _status(full_stack, facts, _children(full_stack, facts, loading))
    conditions = {c.type: c for c in status.conditions}

    assert conditions["ModelsReady"].status is ConditionStatus.FALSE
    assert conditions["ModelsReady"].reason == "ModelsNotReady"
    assert "chat: 0/1 replica(s) ready" in conditions["ModelsReady"].message
    assert (conditions["Ready"].status, conditions["Ready"].reason) == (ConditionStatus.FALSE, "ModelsNotReady")
    assert status.models_ready == "1/2"


def test_a_model_rolling_to_a_new_template_says_so_while_its_old_replica_serves(full_stack, facts) -> None:
    # A model swap: the old replica is still ready, the new template has no replica yet.
    def swapping(live):
        if live["kind"] == "Deployment" and live["metadata"]["name"] == "chat":
            live["metadata"]["generation"] = 2
            live["status"] = {**live["status"], "observedGeneration": 2, "updatedReplicas": 0}
        return live

    status = _status(full_stack, facts, _children(full_stack, facts, swapping))
    models_ready = next(c for c in status.conditions if c.type == "ModelsReady")

    assert models_ready.status is ConditionStatus.FALSE
    assert "chat: 1/1 replica(s) ready (rolling out: 0/1 on the current template)" in models_ready.message


def test_a_deployment_still_on_an_old_generation_is_not_ready(full_stack, facts) -> None:
    def stale(live):
        if live["kind"] == "Deployment" and live["metadata"]["name"] == "assistant":
            live["metadata"]["generation"] = 2
        return live

    status = _status(full_stack, facts, _children(full_stack, facts, stale))
    assert _conditions(status)["ApplicationsReady"] == ("False", "ApplicationsNotReady")


def test_a_store_failing_its_checks_holds_back_its_workloads_and_says_which_check_failed(full_stack, facts) -> None:
    outside = DataStoreStatus(name="corpus", ready=False, location="s3://qa-corpus", region="eu-west-1",
                              reason="LocationOutsideRegions", message="bucket 'qa-corpus' is in eu-west-1")
    hold = Hold("DataStoreFailed", "is not started: data store corpus failed LocationOutsideRegions")
    held = replace(facts, held_back={"chat": hold, "embed": hold, "assistant": hold, "indexer": hold})

    # Held back, the Deployments have zero replicas and are "rolled out"; they are still not ready.
    status = _status(full_stack, held, _children(full_stack, held), stores={"corpus": outside})
    conditions = {c.type: c for c in status.conditions}

    assert next(s for s in status.data_stores if s.name == "corpus") == outside
    assert (conditions["DataStoresReady"].reason, conditions["DataStoresReady"].message) == (
        "LocationOutsideRegions", "corpus: bucket 'qa-corpus' is in eu-west-1")
    assert _conditions(status)["ModelsReady"] == ("False", "DataStoreFailed")
    assert f"chat: {hold.message}" in conditions["ModelsReady"].message
    assert _conditions(status)["ApplicationsReady"] == ("False", "DataStoreFailed")
    assert f"indexer: {hold.message}" in conditions["ApplicationsReady"].message
    assert _conditions(status)["Ready"] == ("False", "LocationOutsideRegions")
    assert status.models_ready == "0/2"


def test_a_bucket_not_verified_is_not_ready(full_stack, facts) -> None:
    status = _status(full_stack, facts, _children(full_stack, facts), stores={})

    corpus = next(s for s in status.data_stores if s.name == "corpus")
    assert (corpus.ready, corpus.reason, corpus.location) == (False, "NotVerified", "s3://qa-corpus")
    assert _conditions(status)["DataStoresReady"] == ("False", "NotVerified")


def test_pending_claim_and_missing_nodepool_are_reported(full_stack, facts) -> None:
    def unsettled(live):
        if live["kind"] == "NodePool":
            return None
        if live["kind"] == "PersistentVolumeClaim":
            live["status"] = {"phase": "Pending"}
        return live

    status = _status(full_stack, facts, _children(full_stack, facts, unsettled))

    assert _conditions(status)["NodePoolsReady"] == ("False", "NodePoolMissing")
    assert _conditions(status)["DataStoresReady"] == ("False", "ClaimPending")


def _audited(*, compliant: bool) -> SovereignStackStatus:
    """A status as the residency audit leaves it: its condition and violations, nothing else."""
    violation = ResidencyViolation(kind="Pod", namespace="gov-qa", name="chat-abc", rule="PodOutsideRegions",
                                   message="runs in eu-west-1", since=NOW)
    condition = Condition(type="ResidencyCompliant", status="True" if compliant else "False",
                          last_transition_time=NOW, reason="InRegions" if compliant else "PodOutsideRegions",
                          message="" if compliant else "1 residency violation(s): runs in eu-west-1")
    return SovereignStackStatus(conditions=[condition], violations=[] if compliant else [violation],
                                violation_count=0 if compliant else 1)


def test_the_audits_fields_are_read_but_never_part_of_the_reconcilers_status(full_stack, facts) -> None:
    status = _status(full_stack, facts, _children(full_stack, facts), previous=_audited(compliant=False))
    written = reconciler_part(status)

    assert "ResidencyCompliant" not in {c["type"] for c in written["conditions"]}
    assert "violations" not in written and "violationCount" not in written
    assert reconciler_part(_audited(compliant=False)) == {"conditions": [], "modelsReady": "", "models": [],
                                                          "dataStores": [], "nodePools": [], "applications": []}


def test_transition_time_moves_only_when_the_status_changes(full_stack, facts) -> None:
    settled = _children(full_stack, facts)
    first = _status(full_stack, facts, settled)
    same = _status(full_stack, facts, settled, previous=first, now=NOW + timedelta(hours=1))

    assert same == first  # nothing changed: nothing to write

    def loading(live):
        if live["kind"] == "Deployment" and live["metadata"]["name"] == "embed":
            live["status"] = {**live["status"], "availableReplicas": 0}
        return live

    changed = _status(full_stack, facts, _children(full_stack, facts, loading), previous=first,
                      now=NOW + timedelta(hours=2))
    times = {c.type: c.last_transition_time for c in changed.conditions}
    assert times["ModelsReady"] == times["Ready"] == NOW + timedelta(hours=2)
    assert times["ApplicationsReady"] == NOW


def test_rejected_children_make_ready_false(full_stack, facts) -> None:
    status = _status(full_stack, facts, _children(full_stack, facts),
                     rejected=["could not apply NodePool x: HTTP 422: spec.limits: Invalid value"])

    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (ConditionStatus.FALSE, "ChildRejected")
    assert "HTTP 422" in ready.message


@pytest.mark.parametrize("enforcement, ready", [("Enforce", "False"), ("Audit", "True")])
def test_residency_breach_blocks_ready_only_when_enforced(full_document, facts, enforcement, ready) -> None:
    full_document["spec"]["residency"]["enforcement"] = enforcement
    stack = stack_from(full_document)

    status = _status(stack, facts, _children(stack, facts), previous=_audited(compliant=False))

    assert _conditions(status)["Ready"][0] == ready
    if ready == "False":
        message = next(c.message for c in status.conditions if c.type == "Ready")
        assert _conditions(status)["Ready"][1] == "PodOutsideRegions"
        assert "ResidencyCompliant: 1 residency violation(s)" in message


def test_ready_does_not_wait_for_the_first_audit(full_stack, facts) -> None:
    assert _conditions(_status(full_stack, facts, _children(full_stack, facts), previous=None))["Ready"] == (
        "True", "StackReady")


def test_invalid_spec_sets_ready_false_and_keeps_the_rest(full_stack, facts) -> None:
    settled = _status(full_stack, facts, _children(full_stack, facts))
    status = invalid_status(generation=2, previous=settled, message="spec.models[0].nodePool: is not declared",
                            now=NOW + timedelta(minutes=1))
    conditions = {c.type: c for c in status.conditions}

    assert (conditions["Ready"].status, conditions["Ready"].reason) == (ConditionStatus.FALSE, "InvalidSpec")
    assert conditions["Ready"].message == "spec.models[0].nodePool: is not declared"
    assert conditions["ModelsReady"].status is ConditionStatus.TRUE
    assert status.observed_generation == 2


def test_an_unhealthy_gpu_fails_gpu_healthy_and_is_named_by_ready_without_failing_it(full_stack, facts) -> None:
    fault = GpuFault(index=3, uuid="GPU-3", state=HealthState.UNHEALTHY, reason="Xid79", fatal=True)
    sick = ClusterFacts(nodes=tuple(
        replace(n, gpu=replace(n.gpu, condition=ConditionStatus.FALSE, reason="Xid79OnGPU3", faults=(fault,)))
        if n.name == "gpu-mec1-3" else replace(n, gpu=replace(n.gpu, condition=ConditionStatus.TRUE))
        for n in facts.nodes))

    status = _status(full_stack, sick, _children(full_stack, sick))

    gpu = next(c for c in status.conditions if c.type == "GPUHealthy")
    assert (gpu.status, gpu.reason) == (ConditionStatus.FALSE, "GPUsUnhealthy")
    assert "gpu-mec1-3 (me-central-1): GPU 3 (GPU-3) Xid79, fatal" in gpu.message
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (ConditionStatus.TRUE, "StackReady")
    assert "but GPUHealthy is False: " in ready.message and "gpu-mec1-3" in ready.message
    assert next(p for p in status.node_pools if p.name == "onprem").unhealthy_gpus == 1

def test_a_stack_on_its_way_is_reconciling_not_stalled(full_stack, facts) -> None:
    """kstatus reads Reconciling=True as InProgress: waiting (here, for a Deployment) will help."""
    status = _status(full_stack, facts, {})

    conditions = _conditions(status)
    assert conditions["Ready"][0] == "False"
    assert conditions["Reconciling"] == ("True", conditions["Ready"][1])
    assert conditions["Stalled"] == ("False", "Reconciling")


def test_a_rejected_child_stalls_the_stack(full_stack, facts) -> None:
    """kstatus reads Stalled=True as Failed, so Flux fails the sync at once instead of timing out."""
    status = _status(full_stack, facts, _children(full_stack, facts),
                     rejected=("Deployment gov-qa/chat: spec.template: Invalid value",))

    conditions = _conditions(status)
    assert conditions["Ready"] == ("False", "ChildRejected")
    assert conditions["Stalled"] == ("True", "ChildRejected")
    assert conditions["Reconciling"] == ("False", "Stalled")


def test_an_invalid_spec_stalls_the_stack() -> None:
    status = invalid_status(generation=3, previous=None, message="spec.models[0].nodePool: is not declared",
                            now=NOW)

    conditions = _conditions(status)
    assert conditions == {"Ready": ("False", "InvalidSpec"), "Reconciling": ("False", "Stalled"),
                          "Stalled": ("True", "InvalidSpec")}
    assert status.observed_generation == 3


def test_a_cpu_only_stack_is_ready_and_its_gpu_health_says_it_has_no_gpus(cpu_stack, facts) -> None:
    weights = {"weights": DataStoreStatus(name="weights", ready=True, location="s3://qa-model-weights",
                                          region="me-central-1", reason="Compliant", message="ok")}
    status = _status(cpu_stack, facts, _children(cpu_stack, facts), stores=weights)
    conditions = {c.type: c for c in status.conditions}

    assert (conditions["Ready"].status.value, conditions["ModelsReady"].reason) == ("True", "ModelsAvailable")
    assert (conditions["GPUHealthy"].status.value, conditions["GPUHealthy"].reason) == ("True", "NoGPUPools")
    assert conditions["NodePoolsReady"].message == "cpu: 1 node(s), CPU only"
    (pool,) = status.node_pools
    assert (pool.nodes, pool.ready_nodes, pool.gpus) == (1, 1, 0)
    (chat,) = status.models
    assert (chat.endpoint, chat.model) == ("http://chat.gov-qa.svc:8000/v1", "qwen2.5-0.5b-instruct-q4_k_m")


def test_a_cpu_pool_without_nodes_says_which_nodes_it_wants(cpu_stack) -> None:
    status = _status(cpu_stack, ClusterFacts(), {})
    ready = next(c for c in status.conditions if c.type == "NodePoolsReady")

    assert ready.reason == "NoMatchingNodes"
    assert "node.kubernetes.io/instance-type=c7i.4xlarge, no nvidia.com/gpu.product label" in ready.message
