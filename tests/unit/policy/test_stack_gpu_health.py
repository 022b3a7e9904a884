"""A stack's GPUHealthy condition and per-pool GPU counts, from the GPU health of its pool nodes."""

from __future__ import annotations

from sovereign.api import ConditionStatus
from sovereign.policy.gpu_health import HealthState
from sovereign.policy.stack_gpu_health import (
    MAX_LISTED,
    GpuFault,
    NodeGpus,
    PoolGpus,
    assess_stack_gpus,
)

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def uuid(gpu: int) -> str:
    return f"GPU-0000000{gpu}-aaaa-bbbb-cccc-dddddddddddd"


def fault(gpu: int, reason: str, *, state: HealthState = HealthState.UNHEALTHY,
          fatal: bool = False) -> GpuFault:
    return GpuFault(index=gpu, uuid=uuid(gpu), state=state, reason=reason, fatal=fatal)


def node(name: str, *faults: GpuFault, condition: ConditionStatus | None = TRUE, reason: str = "",
         region: str | None = "me-central-1", gpus: int = 8) -> NodeGpus:
    """A node as the agent leaves it: GPUHealthy False as soon as one GPU is Unhealthy."""
    if condition is TRUE and any(f.state is HealthState.UNHEALTHY for f in faults):
        condition = FALSE
    return NodeGpus(name=name, region=region, gpus=gpus, condition=condition, reason=reason,
                    faults=faults)


def test_healthy_nodes_make_gpu_healthy_true_with_the_count():
    health = assess_stack_gpus(pools=[("h100", [node("gpu-a"), node("gpu-b")])])

    assert (health.status, health.reason) == (TRUE, "GPUsHealthy")
    assert health.message == "16 GPU(s) on 2 node(s), all healthy"
    assert health.pools == (PoolGpus(name="h100", nodes=2, gpus=16, unhealthy_gpus=0),)
    assert health.fatal_nodes == ()


def test_a_fatal_xid_fails_the_condition_naming_node_gpu_and_fault():
    sick = node("gpu-b", fault(3, "Xid79", fatal=True), reason="Xid79OnGPU3")

    health = assess_stack_gpus(pools=[("h100", [node("gpu-a"), sick])])

    assert (health.status, health.reason) == (FALSE, "GPUsUnhealthy")
    assert health.message == (
        f"1 of 16 GPU(s) unhealthy on 1 of 2 node(s): gpu-b (me-central-1): GPU 3 ({uuid(3)}) "
        "Xid79, fatal; inference pods on nodes with a fatal fault are moved to healthy nodes")
    assert health.pools == (PoolGpus(name="h100", nodes=2, gpus=16, unhealthy_gpus=1),)
    assert health.fatal_nodes == (sick,)


def test_an_unhealthy_but_not_fatal_gpu_fails_the_condition_without_moving_pods():
    pending = node("gpu-a", fault(1, "RowRemapPending"), fault(5, "ThermalNearShutdown"))

    health = assess_stack_gpus(pools=[("h100", [pending])])

    assert (health.status, health.reason) == (FALSE, "GPUsUnhealthy")
    assert health.message == (f"2 of 8 GPU(s) unhealthy on 1 of 1 node(s): gpu-a (me-central-1): "
                              f"GPU 1 ({uuid(1)}) RowRemapPending, GPU 5 ({uuid(5)}) "
                              "ThermalNearShutdown")
    assert health.fatal_nodes == ()


def test_counts_are_per_pool_and_degraded_gpus_are_not_unhealthy():
    hot = fault(2, "ThermalSlowdown", state=HealthState.DEGRADED)

    health = assess_stack_gpus(pools=[
        ("h100", [node("gpu-a", fault(0, "Xid48", fatal=True)), node("gpu-b", hot)]),
        ("onprem", [node("rack-1", gpus=4), node("rack-2", hot, gpus=4)]),
        ("empty", []),
    ])

    assert health.pools == (PoolGpus(name="h100", nodes=2, gpus=16, unhealthy_gpus=1),
                            PoolGpus(name="onprem", nodes=2, gpus=8, unhealthy_gpus=0),
                            PoolGpus(name="empty", nodes=0, gpus=0, unhealthy_gpus=0))
    assert [n.name for n in health.fatal_nodes] == ["gpu-a"]


def test_degraded_gpus_keep_the_condition_true_and_are_named():
    hot = fault(2, "ThermalSlowdown", state=HealthState.DEGRADED)

    health = assess_stack_gpus(pools=[("h100", [node("gpu-a"), node("gpu-b", hot)])])

    assert (health.status, health.reason) == (TRUE, "GPUsDegraded")
    assert health.message == ("16 GPU(s) on 2 node(s), none unhealthy; 1 degraded but serving: "
                              f"gpu-b (me-central-1) GPU 2 ({uuid(2)}) ThermalSlowdown")


def test_without_pool_nodes_the_condition_is_unknown():
    health = assess_stack_gpus(pools=[("h100", [])])

    assert (health.status, health.reason, health.message) == (
        UNKNOWN, "NoPoolNodes", "no node serves the stack's node pools yet")


def test_nodes_without_a_node_agent_leave_the_condition_unknown():
    health = assess_stack_gpus(pools=[("h100", [node("gpu-a", condition=None),
                                                node("gpu-b", condition=None)])])

    assert (health.status, health.reason) == (UNKNOWN, "NoHealthReports")
    assert health.message == (
        "none of the 2 node(s) reports GPU health: gpu-a (me-central-1): no GPUHealthy condition "
        "(is the node agent running there?); gpu-b (me-central-1): no GPUHealthy condition (is "
        "the node agent running there?)")


def test_one_node_without_nvml_makes_the_condition_unknown_naming_it():
    health = assess_stack_gpus(pools=[("h100", [
        node("gpu-a"), node("gpu-b", condition=UNKNOWN, reason="NVMLUnavailable")])])

    assert (health.status, health.reason) == (UNKNOWN, "HealthReportsMissing")
    assert health.message == ("1 of 2 node(s) report no GPU health: gpu-b (me-central-1): "
                              "GPUHealthy=Unknown (NVMLUnavailable); the others report no "
                              "unhealthy GPU")


def test_an_unhealthy_node_outweighs_nodes_that_do_not_report():
    health = assess_stack_gpus(pools=[("h100", [
        node("gpu-a", condition=None), node("gpu-b", fault(7, "GPULost", fatal=True))])])

    assert (health.status, health.reason) == (FALSE, "GPUsUnhealthy")


def test_a_fatal_fault_still_counts_while_nvml_is_unavailable():
    # The agent keeps the last known verdicts (and the taint) while NVML does not answer.
    silent = node("gpu-a", fault(3, "Xid79", fatal=True), condition=UNKNOWN,
                  reason="NVMLUnavailable")

    health = assess_stack_gpus(pools=[("h100", [silent])])

    assert health.status is UNKNOWN
    assert health.fatal_nodes == (silent,)
    assert health.pools[0].unhealthy_gpus == 1


def test_a_condition_without_a_record_is_described_by_its_reason():
    bare = node("gpu-a", condition=FALSE, reason="Xid79OnGPU3", region=None)

    health = assess_stack_gpus(pools=[("h100", [bare])])

    assert health.message == "unhealthy GPUs on 1 of 1 node(s): gpu-a: Xid79OnGPU3"


def test_long_listings_are_cut_short():
    nodes = [node(f"gpu-{i:02}", fault(0, "Xid79", fatal=True)) for i in range(MAX_LISTED + 3)]

    health = assess_stack_gpus(pools=[("h100", nodes)])

    assert health.message.count("Xid79") == MAX_LISTED
    assert "; and 3 more; inference pods" in health.message


def test_equal_health_compares_equal_and_a_new_fault_does_not():
    before = assess_stack_gpus(pools=[("h100", [node("gpu-a"), node("gpu-b")])])
    same = assess_stack_gpus(pools=[("h100", [node("gpu-b"), node("gpu-a")])])
    after = assess_stack_gpus(pools=[("h100", [node("gpu-a"), node("gpu-b", fault(1, "Xid79",
                                                                                fatal=True))])])

    assert before == same
    assert after != before
