"""Node pools: the Karpenter NodePool's constraints, and which existing nodes a pool claims."""

from __future__ import annotations

from dataclasses import replace

import pytest

from render_inputs import sample_document, stack_from  # next to this file

from sovereign.render.facts import ClusterFacts
from sovereign.render.names import STACK_ID_LABEL, nodepool_name, stack_id
from sovereign.render.nodepool import placement, pool_nodes, render_node_pool


def _pool(stack, name):
    return next(p for p in stack.spec.node_pools if p.name == name)


def test_karpenter_nodepool_is_pinned_to_regions_and_gpu_product(full_stack, facts) -> None:
    (nodepool,) = render_node_pool(stack=full_stack, pool=_pool(full_stack, "h100"), facts=facts)
    template = nodepool["spec"]["template"]["spec"]
    requirements = {r["key"]: r["values"] for r in template["requirements"]}

    assert nodepool["apiVersion"] == "karpenter.sh/v1"
    assert requirements["topology.kubernetes.io/region"] == ["me-central-1"]
    assert requirements["nvidia.com/gpu.product"] == ["NVIDIA-H100-80GB-HBM3"]
    assert requirements["karpenter.sh/capacity-type"] == ["on-demand", "reserved"]
    assert requirements["node.kubernetes.io/instance-type"] == ["p5.48xlarge"]
    assert template["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert template["nodeClassRef"] == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu-me-central-1"}
    assert nodepool["spec"]["limits"] == {"nvidia.com/gpu": "32"}
    assert nodepool["spec"]["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30m"}


@pytest.mark.parametrize(("group", "key", "value"), [
    ("karpenter.k8s.aws", "karpenter.k8s.aws/instance-gpu-name", "h100"),
    ("karpenter.azure.com", "karpenter.azure.com/sku-gpu-name", "H100"),
    ("karpenter.k8s.gcp", "karpenter.k8s.gcp/instance-gpu-name", "nvidia-h100-80gb"),
    ("karpenter.kwok.sh", "karpenter.kwok.sh/instance-gpu-name", "h100"),
])
def test_gpu_name_pins_the_gpu_on_the_label_of_the_node_class_provider(facts, group, key, value) -> None:
    document = sample_document("full")
    karpenter = document["spec"]["nodePools"][0]["karpenter"]
    del karpenter["instanceTypes"]
    karpenter |= {"gpuName": value, "nodeClassRef": {"group": group, "kind": "SomeNodeClass", "name": "gpu"}}
    stack = stack_from(document)

    (nodepool,) = render_node_pool(stack=stack, pool=_pool(stack, "h100"), facts=facts)
    requirements = {r["key"]: r["values"] for r in nodepool["spec"]["template"]["spec"]["requirements"]}

    assert requirements[key] == [value]
    assert "node.kubernetes.io/instance-type" not in requirements
    # Still required, so Karpenter launches nodes for pods that require it; the pin makes it true.
    assert requirements["nvidia.com/gpu.product"] == ["NVIDIA-H100-80GB-HBM3"]


def test_nodepool_is_cluster_scoped_and_owned_by_annotation(full_stack, facts) -> None:
    (nodepool,) = render_node_pool(stack=full_stack, pool=_pool(full_stack, "h100"), facts=facts)
    meta = nodepool["metadata"]

    assert "namespace" not in meta and "ownerReferences" not in meta
    assert meta["annotations"]["sovereign.ai/owner"] == "gov-qa/citizen-services"
    assert meta["labels"]["sovereign.ai/stack"] == "citizen-services"


def test_nodepool_name_fits_the_label_karpenter_copies_it_into() -> None:
    document = sample_document("full")
    document["metadata"] |= {"name": "a" * 63, "namespace": "b" * 63}
    stack = stack_from(document)

    name = nodepool_name(stack, "h100")
    assert len(name) <= 63
    assert name == nodepool_name(stack, "h100")
    assert name != nodepool_name(stack, "h200")


def test_two_namesake_stacks_in_two_namespaces_select_different_nodes() -> None:
    pods = []
    for namespace in ("team-a", "team-b"):
        document = sample_document("full")
        document["metadata"] |= {"name": "prod", "namespace": namespace}
        stack = stack_from(document)
        pods.append(placement(stack, _pool(stack, "onprem")))

    assert pods[0][STACK_ID_LABEL] == "team-a.prod"
    assert pods[1][STACK_ID_LABEL] == "team-b.prod"


def test_stack_id_fits_a_label_value_and_keeps_long_namesakes_apart() -> None:
    ids = set()
    for namespace in ("n" * 63, "n" * 62 + "m"):
        document = sample_document("full")
        document["metadata"] |= {"name": "s" * 200, "namespace": namespace}
        ids.add(stack_id(stack_from(document)))

    assert len(ids) == 2
    assert all(len(value) <= 63 and value[-1].isalnum() for value in ids)


def test_existing_pool_claims_matching_nodes_in_the_allowed_regions_only(full_stack, facts) -> None:
    pool = _pool(full_stack, "onprem")
    nodes = pool_nodes(stack=full_stack, pool=pool, facts=facts)

    assert [n.name for n in nodes.selected] == ["gpu-mec1-2", "gpu-mec1-3"]
    (refused,) = nodes.refused
    assert refused.node.name == "gpu-euw1-0"
    assert "eu-west-1, outside the allowed regions (me-central-1)" in refused.reason
    claims = render_node_pool(stack=full_stack, pool=pool, facts=facts)
    assert [c["metadata"]["name"] for c in claims] == ["gpu-mec1-2", "gpu-mec1-3"]
    assert claims[0]["metadata"]["labels"] == {"sovereign.ai/pool": "onprem", "sovereign.ai/stack": "citizen-services",
                                               "sovereign.ai/stack-id": "gov-qa.citizen-services"}
    assert claims[0]["metadata"]["annotations"] == {"sovereign.ai/owner": "gov-qa/citizen-services"}


def test_existing_pool_leaves_nodes_another_stack_claimed(full_stack, facts) -> None:
    taken = tuple(replace(n, owner="other-ns/other") if n.name == "gpu-mec1-2" else n for n in facts.nodes)
    nodes = pool_nodes(stack=full_stack, pool=_pool(full_stack, "onprem"), facts=ClusterFacts(nodes=taken))

    assert [n.name for n in nodes.selected] == ["gpu-mec1-3"]
    assert any(r.node.name == "gpu-mec1-2" and "other-ns/other" in r.reason for r in nodes.refused)


def test_a_node_matching_two_existing_pools_serves_the_first(facts) -> None:
    document = sample_document("full")
    second = {"name": "rack", "provisioner": "Existing", "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8},
              "existing": {"nodeSelector": {"sovereign.ai/rack": "doha-1"}}}
    document["spec"]["nodePools"].append(second)
    stack = stack_from(document)

    later = pool_nodes(stack=stack, pool=_pool(stack, "rack"), facts=facts)
    assert later.selected == ()
    assert {r.node.name for r in later.refused if "pool onprem" in r.reason} == {"gpu-mec1-2", "gpu-mec1-3"}


def test_a_karpenter_cpu_pool_has_no_gpu_requirement_no_taint_and_cpu_limits(facts) -> None:
    document = sample_document("cpu")
    document["spec"]["nodePools"][0] = {
        "name": "cpu", "provisioner": "Karpenter", "limits": {"cpu": "64", "memory": "256Gi"},
        "karpenter": {"nodeClassRef": {"name": "cpu-me-central-1"}, "instanceTypes": ["c7i.4xlarge"]},
    }
    stack = stack_from(document)
    (nodepool,) = render_node_pool(stack=stack, pool=_pool(stack, "cpu"), facts=facts)
    template = nodepool["spec"]["template"]["spec"]

    assert {r["key"] for r in template["requirements"]} == {
        "topology.kubernetes.io/region", "karpenter.sh/capacity-type", "node.kubernetes.io/instance-type"}
    assert "taints" not in template
    assert nodepool["spec"]["limits"] == {"cpu": "64", "memory": "256Gi"}


def test_an_existing_cpu_pool_never_claims_a_gpu_node(facts) -> None:
    """A CPU pool selecting every node of the region gets the CPU node, not the GPU nodes beside it."""
    document = sample_document("cpu")
    del document["spec"]["nodePools"][0]["existing"]
    stack = stack_from(document)

    nodes = pool_nodes(stack=stack, pool=_pool(stack, "cpu"), facts=facts)

    assert [n.name for n in nodes.selected] == ["cpu-mec1-0"]
    assert nodes.refused == ()
