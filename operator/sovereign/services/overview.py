"""A read-only snapshot of stacks and GPU nodes: what ``sovereign status`` and ``dev up`` show.

``read_overview`` lists SovereignStacks (one, a namespace's, or all) and the GPU nodes with their
``GPUHealthy`` condition (set by the node agent) and pool label (set by the reconciler), and
returns plain frozen dataclasses, so the terminal view in ``cli._view`` has nothing to fetch.
Reads only; called by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sovereign.api import ConditionType
from sovereign.kube.client import Kube
from sovereign.kube.resources import NODE, STACK
from sovereign.render.names import GPU_PRODUCT_LABEL, GPU_RESOURCE, POOL_LABEL, REGION_LABEL


@dataclass(frozen=True)
class ConditionView:
    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class StackView:
    namespace: str
    name: str
    jurisdiction: str
    regions: tuple[str, ...]
    enforcement: str
    generation: int
    observed_generation: int | None
    conditions: tuple[ConditionView, ...]
    models: tuple[dict[str, Any], ...]
    node_pools: tuple[dict[str, Any], ...]
    data_stores: tuple[dict[str, Any], ...]
    violations: tuple[dict[str, Any], ...]

    def condition(self, type_: str) -> ConditionView | None:
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def ready(self) -> bool:
        ready = self.condition(ConditionType.READY)
        return bool(ready and ready.status == "True" and self.observed_generation == self.generation)


@dataclass(frozen=True)
class NodeView:
    name: str
    region: str
    product: str
    gpus: int
    pool: str
    ready: bool
    gpu_healthy: ConditionView | None
    taints: tuple[str, ...]


@dataclass(frozen=True)
class Overview:
    stacks: tuple[StackView, ...]
    nodes: tuple[NodeView, ...] = field(default_factory=tuple)


def read_overview(kube: Kube, *, namespace: str | None = None, name: str | None = None) -> Overview:
    """Stacks matching namespace/name (all when both are None) and every GPU node."""
    if name is not None:
        found = kube.get(STACK, name=name, namespace=namespace)
        bodies = [found] if found else []
    else:
        bodies = kube.list(STACK, namespace=namespace)
    stacks = tuple(sorted((_stack(b) for b in bodies), key=lambda s: (s.namespace, s.name)))
    nodes = tuple(sorted((_node(n) for n in kube.list(NODE)
                          if GPU_RESOURCE in (n.get("status", {}).get("capacity") or {})),
                         key=lambda n: (n.region, n.name)))
    return Overview(stacks=stacks, nodes=nodes)


def _conditions(raw: list[dict[str, Any]] | None) -> tuple[ConditionView, ...]:
    return tuple(ConditionView(type=c.get("type", ""), status=c.get("status", "Unknown"),
                               reason=c.get("reason", ""), message=c.get("message", ""))
                 for c in raw or [])


def _stack(body: dict[str, Any]) -> StackView:
    meta, spec, status = body["metadata"], body.get("spec", {}), body.get("status") or {}
    residency = spec.get("residency", {})
    return StackView(
        namespace=meta.get("namespace", ""), name=meta["name"],
        jurisdiction=residency.get("jurisdiction", ""),
        regions=tuple(residency.get("regions", [])),
        enforcement=residency.get("enforcement", "Enforce"),
        generation=meta.get("generation", 0),
        observed_generation=status.get("observedGeneration"),
        conditions=_conditions(status.get("conditions")),
        models=tuple(status.get("models", [])),
        node_pools=tuple(status.get("nodePools", [])),
        data_stores=tuple(status.get("dataStores", [])),
        violations=tuple(status.get("violations", [])),
    )


def _node(body: dict[str, Any]) -> NodeView:
    meta, status = body["metadata"], body.get("status", {})
    labels = meta.get("labels", {})
    conditions = _conditions(status.get("conditions"))
    ready = next((c for c in conditions if c.type == "Ready"), None)
    return NodeView(
        name=meta["name"], region=labels.get(REGION_LABEL, ""),
        product=labels.get(GPU_PRODUCT_LABEL, ""),
        gpus=int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0)),
        pool=labels.get(POOL_LABEL, ""),
        ready=bool(ready and ready.status == "True"),
        gpu_healthy=next((c for c in conditions if c.type == ConditionType.GPU_HEALTHY), None),
        taints=tuple(f"{t['key']}={t.get('value', '')}:{t['effect']}"
                     for t in body.get("spec", {}).get("taints") or []
                     if t["key"].startswith("sovereign.ai/")),
    )
