"""Node pools: a Karpenter NodePool per Karpenter pool; labels on the chosen nodes of an Existing pool.

``Karpenter``: a cluster-scoped ``karpenter.sh/v1`` NodePool whose requirements pin nodes to the
allowed regions and the GPU, tainted so only GPU workloads land there, with the pool's limits and
disruption settings; a CPU pool (no ``gpu``) has neither GPU requirement nor taint. The GPU is
pinned by what Karpenter's instance types define: ``instanceTypes`` and/or ``gpuName`` on the
provider's GPU-name label (``api.models.GPU_NAME_LABELS``). The ``nvidia.com/gpu.product``
requirement stays, because model pods require that label and Karpenter only launches nodes for
pods whose labels the NodePool promises; Karpenter stamps it on the node, and the pin makes it true.
Karpenter copies the NodePool's name into the ``karpenter.sh/nodepool`` label of each node it
launches; model pods require that label.

``Existing``: the nodes that carry every label of ``existing.nodeSelector`` and the GPU product
label (for a CPU pool: no GPU product label) are the pool, minus any outside the allowed regions or claimed by another stack (those
are refused and reported, never labelled). Each chosen node gets ``sovereign.ai/pool=<pool>``,
``sovereign.ai/stack=<stack>`` and ``sovereign.ai/stack-id=<namespace>.<stack>`` labels and the
owner annotation, rendered as a partial Node that server-side apply merges into the live node;
model pods require the pool and the stack-id labels (the stack's name alone would also match
the nodes of a namesake stack in another namespace). Nodes labelled by a release without the
stack-id get it on the stack's next pass, and its pods roll once onto the stricter affinity.

Both kinds of objects are cluster-scoped, so the stack's finalizer removes them. Pure; called
by ``render.stack`` and (``pool_nodes``) by the status computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sovereign.api import NodePool, Provisioner, SovereignStack
from sovereign.api.models import GPU_NAME_LABELS
from sovereign.render import names
from sovereign.render.facts import ClusterFacts, NodeFacts
from sovereign.render.names import Component

KARPENTER_API_VERSION = "karpenter.sh/v1"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


@dataclass(frozen=True)
class RefusedNode:
    """A node that matches a pool's selector but may not serve it, and why."""

    node: NodeFacts
    reason: str


@dataclass(frozen=True)
class PoolNodes:
    """The nodes of one pool as the facts show them."""

    selected: tuple[NodeFacts, ...]
    refused: tuple[RefusedNode, ...] = ()


def placement(stack: SovereignStack, pool: NodePool) -> dict[str, str]:
    """Node labels (besides the region) a pod of ``pool`` requires, in a stable order."""
    if pool.provisioner is Provisioner.KARPENTER:
        where = {names.KARPENTER_NODEPOOL_LABEL: names.nodepool_name(stack, pool.name)}
    else:
        where = {names.POOL_LABEL: pool.name, names.STACK_ID_LABEL: names.stack_id(stack)}
    if pool.gpu is None:
        return where
    return {**where, names.GPU_PRODUCT_LABEL: pool.gpu.product}


def gpu_name_label(pool: NodePool) -> str:
    """The node label that says which GPU a node of ``pool`` really has: the provider's GPU-name
    label for a Karpenter pool whose node class has a known one, else GPU feature discovery's
    product label (which Karpenter copies from the NodePool, so it proves nothing there)."""
    if pool.karpenter is not None and pool.karpenter.node_class_ref.group in GPU_NAME_LABELS:
        return GPU_NAME_LABELS[pool.karpenter.node_class_ref.group]
    return names.GPU_PRODUCT_LABEL


def pool_nodes(*, stack: SovereignStack, pool: NodePool, facts: ClusterFacts) -> PoolNodes:
    """The nodes that serve ``pool`` and, for Existing pools, the matching nodes refused.

    A node matching two Existing pools of the stack serves the first in spec order.
    """
    if pool.provisioner is Provisioner.KARPENTER:
        wanted = names.nodepool_name(stack, pool.name)
        return PoolNodes(selected=tuple(n for n in facts.nodes if n.label(names.KARPENTER_NODEPOOL_LABEL) == wanted))
    earlier = [
        other for other in stack.spec.node_pools[: stack.spec.node_pools.index(pool)]
        if other.provisioner is Provisioner.EXISTING
    ]
    regions = stack.spec.residency.regions
    me = names.owner_id(stack)
    selected: list[NodeFacts] = []
    refused: list[RefusedNode] = []
    for node in sorted(facts.nodes, key=lambda n: n.name):
        if not _matches(pool, node):
            continue
        region = node.label(names.REGION_LABEL)
        first = next((other.name for other in earlier if _matches(other, node)), None)
        if region not in regions:
            where = f"in region {region}" if region else f"without a {names.REGION_LABEL} label"
            refused.append(RefusedNode(node, f"{where}, outside the allowed regions ({', '.join(regions)})"))
        elif node.owner and node.owner != me:
            refused.append(RefusedNode(node, f"already in a pool of stack {node.owner}"))
        elif first is not None:
            refused.append(RefusedNode(node, f"already in pool {first} of this stack"))
        else:
            selected.append(node)
    return PoolNodes(selected=tuple(selected), refused=tuple(refused))


def _matches(pool: NodePool, node: NodeFacts) -> bool:
    """Whether an Existing pool's selector (its labels and the GPU product) picks ``node``. A CPU
    pool never picks a GPU node (one with a GPU product label): its replicas would hold GPUs
    a GPU pool needs, and the GPU taint keeps them off anyway."""
    selector = dict(pool.existing.node_selector if pool.existing else {})
    if pool.gpu is None:
        if node.label(names.GPU_PRODUCT_LABEL) is not None:
            return False
    else:
        selector[names.GPU_PRODUCT_LABEL] = pool.gpu.product
    return all(node.label(key) == value for key, value in selector.items())


def render_node_pool(*, stack: SovereignStack, pool: NodePool, facts: ClusterFacts) -> list[dict[str, Any]]:
    """The objects of one pool: a NodePool (Karpenter) or one partial Node per chosen node (Existing)."""
    if pool.provisioner is Provisioner.KARPENTER:
        return [_karpenter_nodepool(stack, pool)]
    return [
        _node_claim(stack, pool, node) for node in pool_nodes(stack=stack, pool=pool, facts=facts).selected
    ]


def _karpenter_nodepool(stack: SovereignStack, pool: NodePool) -> dict[str, Any]:
    settings = pool.karpenter
    assert settings is not None, "api validation requires karpenter settings for Karpenter pools"
    requirements = [{"key": names.REGION_LABEL, "operator": "In", "values": sorted(stack.spec.residency.regions)}]
    if pool.gpu is not None:
        requirements.append({"key": names.GPU_PRODUCT_LABEL, "operator": "In", "values": [pool.gpu.product]})
    requirements.append(
        {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": sorted(t.value for t in settings.capacity_types)})
    if settings.instance_types:
        requirements.append({"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": sorted(settings.instance_types)})
    if settings.gpu_name is not None:
        requirements.append({"key": GPU_NAME_LABELS[settings.node_class_ref.group], "operator": "In",
                             "values": [settings.gpu_name]})
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": _node_labels(stack, pool)},
            "spec": {
                "nodeClassRef": {
                    "group": settings.node_class_ref.group,
                    "kind": settings.node_class_ref.kind,
                    "name": settings.node_class_ref.name,
                },
                "requirements": requirements,
                # Only GPU workloads land on GPU nodes; a CPU pool's nodes take any pod of the regions.
                **({"taints": [dict(names.GPU_TAINT)]} if pool.gpu is not None else {}),
            },
        },
        "disruption": {
            "consolidationPolicy": settings.consolidation_policy.value,
            "consolidateAfter": settings.consolidate_after,
        },
    }
    if pool.limits is not None:
        limits = {"cpu": pool.limits.cpu, "memory": pool.limits.memory, names.GPU_RESOURCE: pool.limits.gpus}
        spec["limits"] = {key: str(value) for key, value in limits.items() if value is not None}
    return names.stamped({
        "apiVersion": KARPENTER_API_VERSION,
        "kind": "NodePool",
        "metadata": names.metadata(
            stack,
            name=names.nodepool_name(stack, pool.name),
            component=Component.NODE_POOL,
            entry=pool.name,
            namespaced=False,
        ),
        "spec": spec,
    })


def _node_claim(stack: SovereignStack, pool: NodePool, node: NodeFacts) -> dict[str, Any]:
    """The labels and annotation the stack puts on a node of an Existing pool, as a partial Node.

    No spec hash: the node is not the stack's object, and what is compared is just these keys.
    """
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": _node_labels(stack, pool),
            "annotations": {names.OWNER_ANNOTATION: names.owner_id(stack)},
        },
    }


def _node_labels(stack: SovereignStack, pool: NodePool) -> dict[str, str]:
    """The labels a node of ``pool`` carries: which pool, which stack, and the stack's identity
    across namespaces (what pods select on)."""
    return {names.POOL_LABEL: pool.name, names.STACK_LABEL: names.stack_name(stack),
            names.STACK_ID_LABEL: names.stack_id(stack)}
