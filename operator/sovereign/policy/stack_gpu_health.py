"""A stack's GPU health, from the GPU health its nodes publish: the ``GPUHealthy`` condition of the
stack and the GPU counts of each of its node pools. Pure.

The node agent (``services.node_agent``) judges every GPU and writes the verdicts on its node
(``kube.nodes``); ``services.gpu_reaction.node_gpus`` reads them back into a ``NodeGpus``.
``assess_stack_gpus`` takes the nodes of each pool of a stack and decides, worst first:

- ``False``/``GPUsUnhealthy``: some node has an Unhealthy GPU. The node is tainted, so nothing new
  lands there. A fatal fault (XID 79, uncorrectable ECC, a lost GPU...) also moves the stack's
  inference pods off the node (``services.gpu_reaction``), and the message says so; other faults
  (a row remap waiting for a reset, a temperature near shutdown) leave running pods alone. One
  reason for both, the one GitOps health checks treat as needing a person (docs/gitops.md);
- ``Unknown``/``NoPoolNodes``, ``NoHealthReports`` or ``HealthReportsMissing``: no node, no node
  reporting, or some nodes not reporting (no node agent, or NVML unavailable on the node);
- ``True``/``GPUsDegraded``: every node reports, some GPU is slowed down (thermal) but usable;
- ``True``/``GPUsHealthy``; ``True``/``NoGPUPools`` for a stack whose pools are all CPU pools
  (``cpu_pools``, judged by no GPU rule: their nodes have none).

Messages name the nodes and GPUs (index and UUID) and the fault, so ``kubectl describe`` tells an
SRE which GPU to look at. A pool's ``unhealthyGPUs`` counts GPUs the agent reports Unhealthy;
Degraded GPUs still serve and are not counted. Called by the status computation of the
reconciler (``render.status``) and by ``services.gpu_reaction``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sovereign.api import ConditionStatus
from sovereign.policy.gpu_health import HealthState

GPUS_UNHEALTHY = "GPUsUnhealthy"
NO_POOL_NODES = "NoPoolNodes"
NO_HEALTH_REPORTS = "NoHealthReports"
HEALTH_REPORTS_MISSING = "HealthReportsMissing"
GPUS_DEGRADED = "GPUsDegraded"
GPUS_HEALTHY = "GPUsHealthy"
NO_GPU_POOLS = "NoGPUPools"

#: Listed items per message before "and N more": a condition message stays readable at any size.
MAX_LISTED = 8


@dataclass(frozen=True)
class GpuFault:
    """One GPU of a node that is not Healthy, as the node agent reported it."""

    index: int
    uuid: str
    state: HealthState  # Degraded | Unhealthy
    reason: str  # the agent's fault reason, such as Xid79 or RowRemapPending
    fatal: bool = False

    def describe(self) -> str:
        fatal = ", fatal" if self.fatal else ""
        return f"GPU {self.index} ({self.uuid or 'unknown UUID'}) {self.reason}{fatal}"


@dataclass(frozen=True)
class NodeGpus:
    """A node's GPUs as the operator sees them: allocatable count and the agent's verdicts."""

    name: str
    #: ``topology.kubernetes.io/region`` of the node, for messages.
    region: str | None = None
    #: Allocatable ``nvidia.com/gpu``.
    gpus: int = 0
    #: Status of the node's ``GPUHealthy`` condition; None when no node agent has written one.
    condition: ConditionStatus | None = None
    #: Reason of that condition, such as ``Xid79OnGPU3`` or ``NVMLUnavailable``.
    reason: str = ""
    #: Every GPU that is not Healthy, by index.
    faults: tuple[GpuFault, ...] = ()

    @property
    def fatal(self) -> bool:
        """Whether a GPU of the node has a fatal fault: work on it should move elsewhere."""
        return any(f.fatal and f.state is HealthState.UNHEALTHY for f in self.faults)

    @property
    def unhealthy_gpus(self) -> int:
        return sum(1 for f in self.faults if f.state is HealthState.UNHEALTHY)

    @property
    def reporting(self) -> bool:
        return self.condition in (ConditionStatus.TRUE, ConditionStatus.FALSE)

    def where(self) -> str:
        return f"{self.name} ({self.region})" if self.region else self.name


@dataclass(frozen=True)
class PoolGpus:
    """The GPU counts of one node pool (``status.nodePools[]``)."""

    name: str
    nodes: int
    gpus: int
    unhealthy_gpus: int


@dataclass(frozen=True)
class StackGpuHealth:
    """The stack's ``GPUHealthy`` condition and per-pool counts. Equal inputs give equal values,
    so a caller can compare two of them to see whether anything it reports has changed."""

    status: ConditionStatus
    reason: str
    message: str
    pools: tuple[PoolGpus, ...]
    #: Nodes of the stack's pools with a fatal GPU fault, by name.
    fatal_nodes: tuple[NodeGpus, ...] = ()


def assess_stack_gpus(
    *, pools: Sequence[tuple[str, Sequence[NodeGpus]]], cpu_pools: Collection[str] = ()
) -> StackGpuHealth:
    """The stack's GPU health from the nodes of each of its pools: (pool name, nodes), in spec
    order. The nodes of ``cpu_pools`` (pools without GPUs) are neither counted nor judged."""
    pools = [(name, () if name in cpu_pools else nodes) for name, nodes in pools]
    if pools and all(name in cpu_pools for name, _ in pools):
        return StackGpuHealth(
            status=ConditionStatus.TRUE, reason=NO_GPU_POOLS,
            message=f"the stack's node pools have no GPUs (CPU pools: {', '.join(name for name, _ in pools)})",
            pools=tuple(PoolGpus(name=name, nodes=0, gpus=0, unhealthy_gpus=0) for name, _ in pools),
            fatal_nodes=())
    counts = tuple(PoolGpus(name=name, nodes=len(nodes), gpus=sum(n.gpus for n in nodes),
                            unhealthy_gpus=sum(n.unhealthy_gpus for n in nodes))
                   for name, nodes in pools)
    # A node in two pools (which pool selection prevents) would still be judged once.
    nodes = sorted({n.name: n for _, members in pools for n in members}.values(),
                   key=lambda n: n.name)
    fatal = tuple(n for n in nodes if n.fatal)
    status, reason, message = _decide(nodes)
    return StackGpuHealth(status=status, reason=reason, message=message, pools=counts,
                          fatal_nodes=fatal)


def _decide(nodes: Sequence[NodeGpus]) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of the condition, the worst finding first."""
    if not nodes:
        return ConditionStatus.UNKNOWN, NO_POOL_NODES, "no node serves the stack's node pools yet"
    total = sum(n.gpus for n in nodes)
    unhealthy = [n for n in nodes if n.condition is ConditionStatus.FALSE]
    if unhealthy:
        bad = sum(n.unhealthy_gpus for n in unhealthy)
        # Without the agent's per-GPU record (a hand-written condition) there is no count to give.
        counted = f"{bad} of {total} GPU(s) unhealthy" if bad else "unhealthy GPUs"
        listed = _listing([f"{n.where()}: {_unhealthy_detail(n)}" for n in unhealthy])
        message = f"{counted} on {len(unhealthy)} of {len(nodes)} node(s): {listed}"
        if any(n.fatal for n in unhealthy):
            message += "; inference pods on nodes with a fatal fault are moved to healthy nodes"
        return ConditionStatus.FALSE, GPUS_UNHEALTHY, message
    silent = [n for n in nodes if not n.reporting]
    if silent:
        listed = _listing([f"{n.where()}: {_silence(n)}" for n in silent])
        if len(silent) == len(nodes):
            return (ConditionStatus.UNKNOWN, NO_HEALTH_REPORTS,
                    f"none of the {len(nodes)} node(s) reports GPU health: {listed}")
        return (ConditionStatus.UNKNOWN, HEALTH_REPORTS_MISSING,
                f"{len(silent)} of {len(nodes)} node(s) report no GPU health: {listed}; "
                f"the others report no unhealthy GPU")
    degraded = [(n, f) for n in nodes for f in n.faults if f.state is HealthState.DEGRADED]
    if degraded:
        listed = _listing([f"{n.where()} {f.describe()}" for n, f in degraded])
        return (ConditionStatus.TRUE, GPUS_DEGRADED,
                f"{total} GPU(s) on {len(nodes)} node(s), none unhealthy; {len(degraded)} degraded "
                f"but serving: {listed}")
    return ConditionStatus.TRUE, GPUS_HEALTHY, f"{total} GPU(s) on {len(nodes)} node(s), all healthy"


def _unhealthy_detail(node: NodeGpus) -> str:
    faults = [f.describe() for f in node.faults if f.state is HealthState.UNHEALTHY]
    # A node agent that wrote the condition but no readable record: its reason is all there is.
    return ", ".join(faults) if faults else node.reason or "GPUHealthy=False"


def _silence(node: NodeGpus) -> str:
    if node.condition is None:
        return "no GPUHealthy condition (is the node agent running there?)"
    return f"GPUHealthy={node.condition.value}" + (f" ({node.reason})" if node.reason else "")


def _listing(items: Sequence[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return f"{shown}; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else shown
