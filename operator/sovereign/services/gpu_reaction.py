"""The operator's reaction to GPU faults: move a stack's inference pods off nodes with a fatal fault.

The node agent marks a node whose GPU has a fatal fault (XID 79, uncorrectable ECC, a lost
GPU...): ``GPUHealthy=False``, the ``sovereign.ai/gpu-unhealthy`` NoSchedule taint, and a record
of every GPU's verdict (``kube.nodes``). ``node_gpus`` reads that back from a Node. For a stack
whose pool nodes include such a node, ``evict_from_fatal_nodes`` evicts each of its inference
pods running there through the Eviction API (``kube.evictions``): the Deployment starts a
replacement, the taint keeps the scheduler off the faulty node and the pod's required region
affinity keeps the replacement in the stack's regions. A PodDisruptionBudget that allows no
disruption now answers 429; that pod is left where it is and tried again later, never deleted
directly. Each eviction and each newly blocked pod is an Event on the stack.

``GpuReaction`` is one stack's reaction, checked every few seconds from the nodes in memory (a
daemon of ``handlers.stack``, which keeps it in the stack's Kopf memo): it remembers the GPU
health the stack's status last showed, so a reconcile pass runs only when that changed, and
when to look for pods to evict again, so a lasting fault costs one pod list per
``recheck_seconds``, not one per check; an unchanged cluster costs no API call at all.
``node_gpus`` is called by ``services.facts`` for the operator's node index.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sovereign.api import ConditionStatus, InvalidStackError, SovereignStack, parse_stack
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.evictions import EvictionBlocked, evict_pod
from sovereign.kube.nodes import GPU_HEALTHY_CONDITION, GpuHealthRecord
from sovereign.kube.resources import POD
from sovereign.policy.gpu_health import HealthState
from sovereign.policy.stack_gpu_health import GpuFault, NodeGpus, StackGpuHealth
from sovereign.render import names
from sovereign.render.facts import ClusterFacts
from sovereign.render.names import Component
from sovereign.render.status import stack_gpu_health

log = logging.getLogger(__name__)

Manifest = Mapping[str, Any]

# Event reasons on the stack.
POD_EVICTED = "PodEvicted"
EVICTION_BLOCKED = "EvictionBlocked"
EVICTION_FAILED = "EvictionFailed"

#: Seconds before pods a PodDisruptionBudget protected are tried again.
RETRY_SECONDS = 10.0
#: Seconds between looks for pods on faulty nodes while a fault lasts (a pod bound while the
#: node was being tainted, or one the operator could not evict).
RECHECK_SECONDS = 60.0


def node_gpus(node: Mapping[str, Any]) -> NodeGpus:
    """What the node agent and the device plugin say about a Node's GPUs (a dict as the API
    returns it): allocatable count, the ``GPUHealthy`` condition and every GPU not Healthy."""
    metadata = node.get("metadata") or {}
    status = node.get("status") or {}
    condition = next((c for c in status.get("conditions") or []
                      if c.get("type") == GPU_HEALTHY_CONDITION), {})
    record = GpuHealthRecord.from_node(dict(node))
    return NodeGpus(
        name=metadata["name"],
        region=(metadata.get("labels") or {}).get(names.REGION_LABEL),
        gpus=_count((status.get("allocatable") or {}).get(names.GPU_RESOURCE)),
        condition=_condition_status(condition.get("status")),
        reason=condition.get("reason") or "",
        faults=tuple(GpuFault(index=g.index, uuid=g.uuid, state=HealthState(g.state), reason=g.reason,
                              fatal=g.fatal)
                     for g in (record.gpus if record else ())
                     if g.state in (HealthState.DEGRADED, HealthState.UNHEALTHY)),
    )


def pods_to_evict(*, pods: Sequence[Manifest], fatal: Mapping[str, NodeGpus]) -> list[Manifest]:
    """The stack's inference pods on a node of ``fatal`` that an eviction would move, by name.

    Only pods a ReplicaSet controls (a Deployment will start a replacement), and none already
    on its way out: terminating or finished.
    """
    chosen = []
    for pod in pods:
        meta = pod["metadata"]
        node = (pod.get("spec") or {}).get("nodeName")
        if (node in fatal
                and (meta.get("labels") or {}).get(names.COMPONENT_LABEL) == Component.INFERENCE.value
                and not meta.get("deletionTimestamp")
                and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and any(ref.get("controller") and ref.get("kind") == "ReplicaSet"
                        for ref in meta.get("ownerReferences") or [])):
            chosen.append(pod)
    return sorted(chosen, key=lambda p: p["metadata"]["name"])


@dataclass(frozen=True)
class EvictionReport:
    """What one round of evictions did, by pod name."""

    evicted: tuple[str, ...] = ()
    #: Pods a PodDisruptionBudget protects now; tried again after ``RETRY_SECONDS``.
    blocked: tuple[str, ...] = ()
    #: Pods whose eviction failed otherwise (RBAC, apiserver trouble); tried again later.
    failed: tuple[str, ...] = ()


def evict_from_fatal_nodes(*, kube: Kube, body: Manifest, fatal: Mapping[str, NodeGpus],
                           quiet: Collection[str] = ()) -> EvictionReport:
    """Evict the stack's inference pods from the nodes in ``fatal``, with an Event per pod.

    ``quiet``: names of pods whose blocked or failed eviction was already reported; they get no
    second Event while that lasts.
    """
    if not fatal:
        return EvictionReport()
    meta = body["metadata"]
    pods = kube.list(POD, namespace=meta["namespace"], selector=names.stack_selector(meta["name"]))
    evicted: list[str] = []
    blocked: list[str] = []
    failed: list[str] = []
    for pod in pods_to_evict(pods=pods, fatal=fatal):
        pod_meta = pod["metadata"]
        name = pod_meta["name"]
        node = fatal[pod["spec"]["nodeName"]]
        faults = ", ".join(f.describe() for f in node.faults if f.fatal)
        try:
            if not evict_pod(kube, namespace=meta["namespace"], name=name, uid=pod_meta.get("uid")):
                continue  # gone already
        except EvictionBlocked as err:
            blocked.append(name)
            if name not in quiet:
                _event(kube, body, "Warning", EVICTION_BLOCKED,
                       f"pod {name} stays on node {node.name} ({faults}) for now: {err.budgets}; "
                       f"trying again every {RETRY_SECONDS:g}s")
            continue
        except errors.KubeError as err:
            failed.append(name)
            log.warning("stack %s/%s: %s", meta["namespace"], meta["name"], err)
            if name not in quiet:
                _event(kube, body, "Warning", EVICTION_FAILED,
                       f"could not evict pod {name} from node {node.name} ({faults}): {err}; "
                       f"trying again every {RETRY_SECONDS:g}s")
            continue
        evicted.append(name)
        model = (pod_meta.get("labels") or {}).get(names.NAME_LABEL, "")
        _event(kube, body, "Normal", POD_EVICTED,
               f"evicted pod {name} of model {model} from node {node.where()}: {faults}; its "
               f"Deployment replaces it on a healthy node of the pool in the stack's regions")
    return EvictionReport(evicted=tuple(evicted), blocked=tuple(blocked), failed=tuple(failed))


@dataclass
class GpuReaction:
    """One stack's GPU reaction between checks; see the module docstring. Not thread-safe: one
    handler of one stack uses it, one check after the other."""

    _parsed: tuple[int | None, SovereignStack | None] | None = field(default=None, init=False)
    _shown: StackGpuHealth | None = field(default=None, init=False)
    #: The fatal nodes the last look was for, and when to look again while they stay fatal.
    _handled: frozenset[str] = field(default=frozenset(), init=False)
    _next_look: float = field(default=0.0, init=False)
    #: Pods whose blocked or failed eviction has been reported, by name.
    _reported: set[str] = field(default_factory=set, init=False)

    def health(self, *, body: Manifest, facts: ClusterFacts) -> StackGpuHealth | None:
        """The GPU health of the stack's pool nodes (``render.status.stack_gpu_health``); None
        for a spec that does not parse, which the reconciler reports. The spec is parsed again
        only when its generation changes, so a check of an unchanged stack is cheap."""
        generation = body["metadata"].get("generation")
        if self._parsed is None or self._parsed[0] != generation:
            try:
                stack: SovereignStack | None = parse_stack(
                    {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body})
            except InvalidStackError:
                stack = None
            self._parsed = (generation, stack)
        parsed = self._parsed[1]
        return stack_gpu_health(parsed, facts) if parsed is not None else None

    def status_due(self, health: StackGpuHealth) -> bool:
        """Whether the stack's status may not show ``health`` yet: a reconcile pass is due."""
        return health != self._shown

    def status_shown(self, health: StackGpuHealth) -> None:
        """A reconcile pass has written the status for ``health``."""
        self._shown = health

    def evictions_due(self, health: StackGpuHealth, *, now: float) -> bool:
        """Whether to look for pods to evict: a node turned fatal, or it is time to look again."""
        fatal = frozenset(n.name for n in health.fatal_nodes)
        if not fatal:
            self._handled, self._reported = frozenset(), set()
            return False
        return fatal != self._handled or now >= self._next_look

    def evict(self, *, kube: Kube, body: Manifest, health: StackGpuHealth,
              now: float) -> EvictionReport:
        """Evict the stack's inference pods from the fatal nodes of ``health``; plan the next look."""
        report = evict_from_fatal_nodes(kube=kube, body=body,
                                        fatal={n.name: n for n in health.fatal_nodes},
                                        quiet=self._reported)
        self.looked(health, report, now=now)
        return report

    def looked(self, health: StackGpuHealth, report: EvictionReport, *, now: float) -> None:
        """Remember a look at ``health``'s fatal nodes: look again after ``RETRY_SECONDS`` while
        pods are left there, else only every ``RECHECK_SECONDS``."""
        self._reported = {*report.blocked, *report.failed}
        self._handled = frozenset(n.name for n in health.fatal_nodes)
        soon = report.blocked or report.failed
        self._next_look = now + (RETRY_SECONDS if soon else RECHECK_SECONDS)


def _event(kube: Kube, body: Manifest, severity: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    try:
        kube.record_event(regarding={"apiVersion": body["apiVersion"], "kind": body["kind"],
                                     "metadata": meta}, type=severity, reason=reason, message=message)
    except errors.KubeError as err:
        # The eviction happened or not either way; a missing Event is worth a log line only.
        log.warning("stack %s/%s: could not record %s event: %s", meta["namespace"], meta["name"],
                    reason, err)


def _condition_status(value: Any) -> ConditionStatus | None:
    try:
        return ConditionStatus(value)
    except ValueError:
        return None


def _count(quantity: Any) -> int:
    try:
        return int(str(quantity))
    except ValueError:
        return 0
