"""Build the ``ClusterFacts`` the builders need, from Node manifests or from the live cluster.

``node_facts`` reduces one Node (a dict as the API returns it) to ``render.facts.NodeFacts``:
labels, the owner annotation, readiness, and its GPUs: allocatable count and the GPU health the
node agent published (``kube.nodes``, read by ``services.gpu_reaction.node_gpus``). The
operator's handlers call it from a Kopf index over nodes, so a reconcile reads no nodes at all;
``read_cluster_facts`` lists them instead (tests, one-off runs); ``cli.render`` calls
``facts_from_nodes`` on the output of ``kubectl get nodes -o yaml``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sovereign.kube.client import Kube
from sovereign.kube.resources import NODE
from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE, DEFAULT_PROMETHEUS_URL, ClusterFacts, NodeFacts
from sovereign.render.names import OWNER_ANNOTATION
from sovereign.services.gpu_reaction import node_gpus


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    """What the builders and the status need to know about one Node."""
    metadata = node.get("metadata") or {}
    conditions = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
    return NodeFacts(
        name=metadata["name"],
        labels=dict(metadata.get("labels") or {}),
        owner=(metadata.get("annotations") or {}).get(OWNER_ANNOTATION),
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        gpu=node_gpus(node),
    )


def facts_from_nodes(
    nodes: Iterable[Mapping[str, Any]],
    *,
    operator_image: str = DEFAULT_OPERATOR_IMAGE,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
) -> ClusterFacts:
    """Facts from Node manifests, sorted by name so their order never matters."""
    facts = sorted((node_facts(node) for node in nodes), key=lambda n: n.name)
    return ClusterFacts(nodes=tuple(facts), operator_image=operator_image, prometheus_url=prometheus_url)


def read_cluster_facts(
    kube: Kube, *, operator_image: str = DEFAULT_OPERATOR_IMAGE, prometheus_url: str = DEFAULT_PROMETHEUS_URL
) -> ClusterFacts:
    """Facts from the live cluster (one list of nodes)."""
    return facts_from_nodes(kube.list(NODE), operator_image=operator_image, prometheus_url=prometheus_url)

