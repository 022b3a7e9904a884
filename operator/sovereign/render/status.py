"""The stack's status, computed from what is observed in the cluster, never from what was sent.

One function per condition turns observations into a ``Decision`` (status, CamelCase reason,
message) and the per-entry status lists; ``compute_status`` assembles them into a
``SovereignStackStatus``: the reconciler's conditions (``Ready`` summarising all of them),
``observedGeneration``, the printer-column summary and per-model endpoints. A condition's
``lastTransitionTime`` moves only when its status changes, so an unchanged cluster computes a
status equal to the stored one and the reconciler writes nothing.

``GPUHealthy`` and the pools' GPU counts come from the GPU health of the pool nodes
(``stack_gpu_health``, which the GPU reaction shares).

The residency audit (``services.residency_audit``) owns ``ResidencyCompliant``, ``violations``
and ``violationCount`` under its own field manager; ``reconciler_part`` is the rest, the part the
reconciler writes and compares. ``Ready`` reads the audit's condition from the stored status.

S3 stores are shown as the reconciler verified them against their buckets
(``facts.data_stores``); a model or application a failed store holds back (``facts.held_back``)
is not ready, whatever its Deployment says, and its condition says which store failed which check.

``Ready`` is True when every condition is True, except that ``GPUHealthy`` only blocks it when
False (no node agent reporting is Unknown, not a failure) and ``ResidencyCompliant`` only when
False and residency is enforced (Audit records breaches without failing the stack; before the
first audit there is nothing to wait for, admission already holds every pod to the rules).

Pure; called by ``services.reconcile``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sovereign.api import (
    ApplicationStatus,
    CacheLayout,
    Condition,
    ConditionStatus,
    ConditionType,
    DataStoreStatus,
    Enforcement,
    ModelCacheStatus,
    ModelRolloutStatus,
    ModelSpec,
    ModelStatus,
    NodePool,
    NodePoolStatus,
    Provisioner,
    SovereignStack,
    SovereignStackStatus,
)
from sovereign.policy.stack_gpu_health import (
    NodeGpus,
    PoolGpus,
    StackGpuHealth,
    assess_stack_gpus,
)
from sovereign.policy import model_cache as cache_reasons
from sovereign.policy import model_source
from sovereign.policy import rollout as rollout_policy
from sovereign.policy.rollout import RolloutDecision, RolloutState
from sovereign.policy import residency_store as store_reasons
from sovereign.render import names
from sovereign.api.models import LoadFormat
from sovereign.render.cache import cache_name, copies_to_cache, has_s3_source
from sovereign.render.facts import ClusterFacts, FillState, Hold, NodeFacts
from sovereign.render.names import ObjectKey
from sovereign.render.nodepool import INSTANCE_TYPE_LABEL, gpu_name_label, pool_nodes

Manifest = Mapping[str, Any]

# Reasons, as conditions, Events and metrics show them.
STACK_READY = "StackReady"
INVALID_SPEC = "InvalidSpec"
CHILD_REJECTED = "ChildRejected"
NODE_POOLS_READY = "NodePoolsReady"
NODE_POOL_MISSING = "NodePoolMissing"
NODE_POOL_NOT_READY = "NodePoolNotReady"
NO_MATCHING_NODES = "NoMatchingNodes"
NO_NODE_POOLS = "NoNodePools"
DATA_STORES_READY = "DataStoresReady"
CLAIM_MISSING = "ClaimMissing"
CLAIM_PENDING = "ClaimPending"
CLAIM_BOUND = "ClaimBound"
NOT_VERIFIED = "NotVerified"
NO_DATA_STORES = "NoDataStores"
MODELS_AVAILABLE = "ModelsAvailable"
MODELS_NOT_READY = "ModelsNotReady"
NO_MODELS = "NoModels"
APPLICATIONS_AVAILABLE = "ApplicationsAvailable"
APPLICATIONS_NOT_READY = "ApplicationsNotReady"
NO_APPLICATIONS = "NoApplications"
CACHE_FILLING = "CacheFilling"
CACHE_FILL_FAILED = "CacheFillFailed"
#: The state of a SharedVolume cache the cluster cannot provide.
UNAVAILABLE = "Unavailable"

#: Status fields the residency audit writes; the reconciler reads them and never writes them.
AUDIT_CONDITIONS = frozenset({ConditionType.RESIDENCY_COMPLIANT.value})
AUDIT_FIELDS = frozenset({"violations", "violationCount"})


RECONCILING = "Reconciling"
STALLED = "Stalled"
#: Reasons waiting will not fix: a person must change the spec, a Secret or a bucket. Ready=False
#: for one of them (or for an enforced residency violation) is Stalled=True, which kstatus, and so
#: Flux, reads as Failed instead of waiting for a timeout.
LASTING_REASONS = frozenset({
    INVALID_SPEC, CHILD_REJECTED,
    store_reasons.CREDENTIALS_SECRET_MISSING, store_reasons.CREDENTIALS_INVALID, store_reasons.BUCKET_MISSING,
    store_reasons.LOCATION_OUTSIDE_REGIONS, store_reasons.ENCRYPTION_OFF, store_reasons.PUBLIC_ACCESS_ALLOWED,
    store_reasons.REPLICATION_OUTSIDE_REGIONS, store_reasons.REPLICATION_REGION_UNKNOWN,
    store_reasons.CHECK_UNSUPPORTED, model_source.MODEL_FILE_MISSING, model_source.MODEL_FILE_NOT_GGUF,
    model_source.MODEL_NOT_SAFETENSORS,
    CACHE_FILL_FAILED, *cache_reasons.UNAVAILABLE,
    rollout_policy.EVALUATION_FAILED, rollout_policy.CANDIDATE_NOT_STARTING,
    rollout_policy.EVALUATION_ADDED_WITH_NEW_MODEL, rollout_policy.CANARY_ABORTED,
})


class Decision(NamedTuple):
    """One condition's verdict."""

    status: ConditionStatus
    reason: str
    message: str


def _true(reason: str, message: str) -> Decision:
    return Decision(ConditionStatus.TRUE, reason, message)


def _false(reason: str, message: str) -> Decision:
    return Decision(ConditionStatus.FALSE, reason, message)


@dataclass(frozen=True)
class Observation:
    """What the reconciler saw (and wrote) in this pass."""

    #: The stack's children as they are now, by key (the results of this pass's applies included).
    children: Mapping[ObjectKey, Manifest]
    #: Children the apiserver refused in this pass, as messages.
    rejected: Sequence[str] = ()

    def child(self, group: str, kind: str, name: str, namespace: str = "") -> Manifest | None:
        return self.children.get(ObjectKey(group, kind, namespace, name))


def compute_status(
    *,
    stack: SovereignStack,
    facts: ClusterFacts,
    observation: Observation,
    previous: SovereignStackStatus | None,
    now: datetime,
) -> SovereignStackStatus:
    """The status the stack has, given what was observed."""
    namespace = names.stack_namespace(stack)
    gpus = stack_gpu_health(stack, facts)
    pools, pool_statuses = _node_pools(stack, facts, observation, gpus.pools)
    stores, store_statuses = _data_stores(stack, facts, observation, namespace)
    models, model_statuses, rolled_out = _models(stack, facts, observation, namespace)
    apps, app_statuses = _applications(stack, facts, observation, namespace)
    decisions = {
        ConditionType.NODE_POOLS_READY: pools,
        ConditionType.DATA_STORES_READY: stores,
        ConditionType.MODELS_READY: models,
        ConditionType.APPLICATIONS_READY: apps,
        ConditionType.GPU_HEALTHY: Decision(gpus.status, gpus.reason, gpus.message),
    }
    audited = _audited_residency(previous)
    gating = {ConditionType.RESIDENCY_COMPLIANT: audited, **decisions} if audited else decisions
    ready = _ready(stack, gating, observation.rejected)
    reconciling, stalled = _progress(stack, ready, gating)
    generation = stack.metadata.generation
    verdicts = {ConditionType.READY: ready, **decisions,
                ConditionType.RECONCILING: reconciling, ConditionType.STALLED: stalled}
    return SovereignStackStatus(
        observed_generation=generation,
        conditions=[_condition(kind, decision, previous, generation, now) for kind, decision in verdicts.items()],
        models_ready=f"{rolled_out}/{len(model_statuses)}",
        models=model_statuses,
        data_stores=store_statuses,
        node_pools=pool_statuses,
        applications=app_statuses,
    )


def reconciler_part(status: SovereignStackStatus | None) -> dict[str, Any] | None:
    """The status as the reconciler writes it (JSON, wire names), without the audit's fields."""
    if status is None:
        return None
    dumped = status.model_dump(mode="json", exclude_none=True, by_alias=True)
    dumped["conditions"] = [c for c in dumped.get("conditions", []) if c["type"] not in AUDIT_CONDITIONS]
    return {key: value for key, value in dumped.items() if key not in AUDIT_FIELDS}


def invalid_status(
    *, generation: int | None, previous: SovereignStackStatus | None, message: str, now: datetime
) -> SovereignStackStatus:
    """The status of a stack whose spec cannot be reconciled: Ready=False, the rest as it was."""
    base = previous or SovereignStackStatus()
    mine = {ConditionType.READY: _false(INVALID_SPEC, message),
            ConditionType.RECONCILING: _false(STALLED, "the spec must be fixed first"),
            ConditionType.STALLED: _true(INVALID_SPEC, message)}
    written = [_condition(kind, decision, previous, generation, now) for kind, decision in mine.items()]
    others = [c for c in base.conditions if c.type not in {kind.value for kind in mine}]
    return base.model_copy(update={"observed_generation": generation, "conditions": [*written, *others]})


# --- conditions ------------------------------------------------------------------------------------


def _condition(
    kind: ConditionType, decision: Decision, previous: SovereignStackStatus | None, generation: int | None,
    now: datetime,
) -> Condition:
    before = next((c for c in (previous.conditions if previous else []) if c.type == kind.value), None)
    since = before.last_transition_time if before is not None and before.status == decision.status else now
    return Condition(
        type=kind.value,
        status=decision.status,
        observed_generation=generation,
        last_transition_time=since,
        reason=decision.reason,
        message=decision.message,
    )


def _ready(stack: SovereignStack, decisions: Mapping[ConditionType, Decision], rejected: Sequence[str]) -> Decision:
    """Ready means the stack serves what its spec promises, inside its jurisdiction.

    GPU health informs Ready but does not gate it: a fault on one GPU is routed around (the
    taint keeps new pods away, fatal faults evict inference pods) while the models keep serving,
    so failing Ready for it would fail every GitOps sync over a fault already being handled. When
    the fault costs capacity, ModelsReady goes False and gates Ready through that.
    """
    if rejected:
        return _false(CHILD_REJECTED, "; ".join(rejected))
    enforced = stack.spec.residency.enforcement is Enforcement.ENFORCE
    failing = [
        (kind, decision)
        for kind, decision in decisions.items()
        if kind is not ConditionType.GPU_HEALTHY
        and (decision.status is ConditionStatus.FALSE if kind is ConditionType.RESIDENCY_COMPLIANT
             else decision.status is not ConditionStatus.TRUE)
        and (enforced or kind is not ConditionType.RESIDENCY_COMPLIANT)
    ]
    if failing:
        reason = failing[0][1].reason
        return _false(reason, "; ".join(f"{kind.value}: {decision.message}" for kind, decision in failing))
    spec = stack.spec
    message = (f"{len(spec.models)} model(s) and {len(spec.applications)} application(s) available in "
               f"{', '.join(spec.residency.regions)}")
    gpus = decisions.get(ConditionType.GPU_HEALTHY)
    if gpus is not None and gpus.status is ConditionStatus.FALSE:
        message += f"; but GPUHealthy is False: {gpus.message}"
    return _true(STACK_READY, message)


def _progress(stack: SovereignStack, ready: Decision,
              gating: Mapping[ConditionType, Decision]) -> tuple[Decision, Decision]:
    """kstatus's Reconciling and Stalled, which say whether a stack that is not Ready will get there."""
    if ready.status is ConditionStatus.TRUE:
        return _false(STACK_READY, "the stack is Ready"), _false(STACK_READY, "the stack is Ready")
    enforced = stack.spec.residency.enforcement is Enforcement.ENFORCE
    stuck = ready.reason in LASTING_REASONS or any(
        decision.status is ConditionStatus.FALSE
        and (decision.reason in LASTING_REASONS or (kind is ConditionType.RESIDENCY_COMPLIANT and enforced))
        for kind, decision in gating.items())
    if stuck:
        return _false(STALLED, "waiting will not help: " + ready.message), _true(ready.reason, ready.message)
    return _true(ready.reason, ready.message), _false(RECONCILING, "on the way to Ready")


def _audited_residency(previous: SovereignStackStatus | None) -> Decision | None:
    """The residency audit's verdict as stored, or None before its first audit."""
    stored = next((c for c in (previous.conditions if previous else [])
                   if c.type == ConditionType.RESIDENCY_COMPLIANT.value), None)
    return Decision(stored.status, stored.reason, stored.message) if stored is not None else None


def _node_pools(
    stack: SovereignStack, facts: ClusterFacts, observation: Observation, counts: Sequence[PoolGpus]
) -> tuple[Decision, list[NodePoolStatus]]:
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    statuses: list[NodePoolStatus] = []
    for pool, count in zip(stack.spec.node_pools, counts, strict=True):
        nodes = pool_nodes(stack=stack, pool=pool, facts=facts)
        statuses.append(NodePoolStatus(
            name=pool.name,
            nodes=len(nodes.selected),
            ready_nodes=sum(1 for n in nodes.selected if n.ready),
            gpus=count.gpus,
            instance_types=_distinct(n.label(INSTANCE_TYPE_LABEL) for n in nodes.selected),
            gpu_names=_distinct(n.label(gpu_name_label(pool)) for n in nodes.selected) if pool.gpu else [],
            unhealthy_gpus=count.unhealthy_gpus,
        ))
        refused = "; ".join(f"node {r.node.name} not used: {r.reason}" for r in nodes.refused)
        if refused:
            notes.append(refused)
        if pool.provisioner is Provisioner.KARPENTER:
            name = names.nodepool_name(stack, pool.name)
            nodepool = observation.child("karpenter.sh", "NodePool", name)
            if nodepool is None:
                problems.append((NODE_POOL_MISSING, f"{pool.name}: NodePool {name} does not exist"))
                continue
            ready = _status_condition(nodepool, "Ready")
            if ready.get("status") != "True":
                said = ready.get("message") or "Karpenter has not reported it Ready (is Karpenter running?)"
                problems.append((NODE_POOL_NOT_READY, f"{pool.name}: NodePool {name}: {said}"))
        elif not any(n.ready for n in nodes.selected):
            what = f"{pool.name}: no Ready node carries {_selector_text(pool)} in {', '.join(stack.spec.residency.regions)}"
            problems.append((NO_MATCHING_NODES, what))
    # Refused nodes are worth knowing either way: someone labelled them for this pool.
    if problems:
        return _false(problems[0][0], "; ".join([message for _, message in problems] + notes)), statuses
    if not statuses:
        return _true(NO_NODE_POOLS, "the stack declares no node pools"), statuses
    cpu = {pool.name for pool in stack.spec.node_pools if pool.gpu is None}
    summary = ", ".join(f"{s.name}: {s.ready_nodes} node(s), " + ("CPU only" if s.name in cpu else f"{s.gpus} GPU(s)")
                        + (f" ({'/'.join(s.gpu_names)})" if s.gpu_names else "") for s in statuses)
    return _true(NODE_POOLS_READY, "; ".join([summary, *notes])), statuses


def _distinct(values: Iterable[str | None]) -> list[str]:
    return sorted({value for value in values if value})


def _selector_text(pool: NodePool) -> str:
    labels = dict(pool.existing.node_selector if pool.existing else {})
    if pool.gpu is None:
        return ", ".join([*(f"{key}={value}" for key, value in labels.items()), f"no {names.GPU_PRODUCT_LABEL} label"])
    labels[names.GPU_PRODUCT_LABEL] = pool.gpu.product
    return ", ".join(f"{key}={value}" for key, value in labels.items())


def _data_stores(
    stack: SovereignStack, facts: ClusterFacts, observation: Observation, namespace: str
) -> tuple[Decision, list[DataStoreStatus]]:
    statuses: list[DataStoreStatus] = []
    for store in stack.spec.data_stores:
        if store.volume is not None:
            claim = observation.child("", "PersistentVolumeClaim", store.name, namespace)
            phase = ((claim or {}).get("status") or {}).get("phase")
            where = f"persistentvolumeclaim/{store.name}"
            if claim is None:
                statuses.append(DataStoreStatus(name=store.name, ready=False, location=where, reason=CLAIM_MISSING,
                                                message=f"PersistentVolumeClaim {store.name} does not exist"))
            elif phase == "Bound":
                volume = (claim.get("spec") or {}).get("volumeName", "")
                statuses.append(DataStoreStatus(name=store.name, ready=True, location=where, reason=CLAIM_BOUND,
                                                message=f"bound to PersistentVolume {volume}"))
            else:
                statuses.append(DataStoreStatus(name=store.name, ready=False, location=where, reason=CLAIM_PENDING,
                                                message=f"PersistentVolumeClaim {store.name} is {phase or 'Pending'}"))
            continue
        s3 = store.s3
        assert s3 is not None, "api validation requires exactly one of s3 or volume"
        statuses.append(facts.data_stores.get(store.name) or DataStoreStatus(
            name=store.name, ready=False, location=f"s3://{s3.bucket}", reason=NOT_VERIFIED,
            message="the bucket has not been verified yet"))
    # A bucket failing its residency checks holds workloads back: its reason comes first.
    failing = sorted((s for s in statuses if not s.ready), key=lambda s: s.name not in facts.data_stores)
    if failing:
        return _false(failing[0].reason, "; ".join(f"{s.name}: {s.message}" for s in failing)), statuses
    if not statuses:
        return _true(NO_DATA_STORES, "the stack declares no data stores"), statuses
    return _true(DATA_STORES_READY, f"{len(statuses)} store(s) ready"), statuses


class _Rollout(NamedTuple):
    desired: int
    total: int
    ready: int
    done: bool
    note: str


def _rollout(deployment: Manifest | None) -> _Rollout:
    """How far a Deployment is: done when every replica runs the current template and is available."""
    if deployment is None:
        return _Rollout(0, 0, 0, False, "Deployment does not exist")
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = spec.get("replicas", 1)
    total = status.get("replicas", 0)
    ready = status.get("readyReplicas", 0)
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    done = (current and status.get("updatedReplicas", 0) == desired and total == desired
            and status.get("availableReplicas", 0) == desired)
    progressing = _status_condition(deployment, "Progressing")
    updated = status.get("updatedReplicas", 0)
    note = f"{ready}/{desired} replica(s) ready"
    if not done and progressing.get("reason") == "ProgressDeadlineExceeded":
        note += f" ({progressing.get('message', 'rollout stalled')})"
    elif not done and (not current or updated < desired or total > desired):
        # The old replicas may all be ready while the new template is not: say so, or the
        # condition reads "1/1 ready" while it is False (a Recreate rollout never surges).
        note += f" (rolling out: {updated if current else 0}/{desired} on the current template)"
    return _Rollout(desired, total, ready, done, note)


def _models(
    stack: SovereignStack, facts: ClusterFacts, observation: Observation, namespace: str
) -> tuple[Decision, list[ModelStatus], int]:
    """The ModelsReady decision, each model's status, and how many models are fully rolled out."""
    statuses: list[ModelStatus] = []
    waiting: list[str] = []
    held: list[Hold] = []
    for model in stack.spec.models:
        plan = (facts.rollouts or {}).get(model.name) if model.evaluation is not None else None
        deployment = observation.child("apps", "Deployment", _serving_deployment(model, plan), namespace)
        service = observation.child("", "Service", model.name, namespace)
        rollout = _rollout(deployment)
        served = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(names.MODEL_ID_ANNOTATION, "")
        cache_status = _cache_status(stack, model, facts)
        statuses.append(ModelStatus(
            name=model.name,
            model=served,
            replicas=rollout.total,
            ready_replicas=rollout.ready,
            endpoint=names.model_endpoint(namespace=namespace, model=model.name) if service is not None else "",
            cache=cache_status,
            rollout=_rollout_status(model, plan),
            history=list(plan.history) if plan is not None else [],
        ))
        if model.name in facts.held_back:
            held.append(facts.held_back[model.name])
            waiting.append(f"{model.name}: {held[-1].message}")
        elif cache_status is not None and cache_status.state in (FillState.FILLING, FillState.FAILED):
            reason = CACHE_FILLING if cache_status.state == FillState.FILLING else CACHE_FILL_FAILED
            held.append(Hold(reason, cache_status.message))
            waiting.append(f"{model.name}: {cache_status.message}")
        elif plan is not None and plan.state is not RolloutState.SERVING:
            # Ready waits for the spec's model, whatever serves meanwhile: Reconciling while it
            # is tried, Stalled when it failed (kstatus, so Argo CD and Flux, read both).
            held.append(Hold(plan.reason, plan.message))
            waiting.append(f"{model.name}: {plan.message}")
        elif not rollout.done:
            waiting.append(f"{model.name}: {rollout.note}")
    done = len(statuses) - len(waiting)
    if waiting:
        return _false(held[0].reason if held else MODELS_NOT_READY, "; ".join(waiting)), statuses, done
    if not statuses:
        return _true(NO_MODELS, "the stack declares no models"), statuses, done
    summary = ", ".join(f"{s.name}: {s.ready_replicas} ready" for s in statuses)
    return _true(MODELS_AVAILABLE, summary), statuses, done


def _serving_deployment(model: ModelSpec, plan: RolloutDecision | None) -> str:
    """The Deployment whose replicas answer the model's Service: the serving revision's for a
    model with evaluation (the spec's before any rollout was observed), else the model's own."""
    if model.evaluation is None:
        return model.name
    serving = plan.serving if plan is not None else rollout_policy.revision(model)
    return names.revision_name(model=model.name, revision=serving) if serving else ""


def _rollout_status(model: ModelSpec, plan: RolloutDecision | None) -> ModelRolloutStatus | None:
    if plan is None:
        return None
    trying = plan.state is not RolloutState.SERVING
    return ModelRolloutStatus(state=plan.state.value, candidate=model.model if trying else "",
                              revision=plan.desired, message=plan.message,
                              evaluation=plan.evidence if trying else None)


def _cache_status(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> ModelCacheStatus | None:
    """A model's cache as observed: a SharedVolume cache's fill (its loader Job and the loader's
    report), or just where the weights are kept for the other layouts; None for weights that
    are not copied (a volume store, streaming)."""
    if model.load_format is not LoadFormat.COPY or not has_s3_source(stack=stack, model=model):
        return None
    layout = model.cache.layout
    if not copies_to_cache(stack=stack, model=model):
        return ModelCacheStatus(layout=layout.value)
    name = cache_name(stack=stack, model=model)
    hold = facts.held_back.get(model.name)
    if layout is not CacheLayout.SHARED_VOLUME:
        return ModelCacheStatus(layout=layout.value, name=name)
    if hold is not None and hold.reason in cache_reasons.UNAVAILABLE:
        return ModelCacheStatus(layout=layout.value, name=name, state=UNAVAILABLE, message=hold.message)
    fill = (facts.caches or {}).get(model.name)
    if fill is None or fill.name != name:
        return ModelCacheStatus(layout=layout.value, name=name, state=FillState.FILLING,
                                message=f"cache {name} filling: loader Job {name} is being created")
    report = fill.report
    if fill.state is FillState.FILLED:
        return ModelCacheStatus(
            layout=layout.value, name=name, state=fill.state, files=int(report.get("files", 0)),
            bytes=int(report.get("bytes", 0)), downloaded_bytes=int(report.get("downloadedBytes", 0)),
            verified=bool(report.get("verified", False)), filled_at=fill.completed,
            message=(f"{report.get('files', 0)} file(s), {report.get('bytes', 0)} bytes "
                     f"from {report.get('source', 'the store')}")
            if report else "filled (the loader left no report)")
    what = "filling" if fill.state is FillState.FILLING else "fill failed"
    advice = f"; delete Job {name} to fill it again once the cause is fixed" if fill.state is FillState.FAILED else ""
    return ModelCacheStatus(layout=layout.value, name=name, state=fill.state,
                            message=f"cache {name} {what}: {fill.message}{advice}")


def _applications(
    stack: SovereignStack, facts: ClusterFacts, observation: Observation, namespace: str
) -> tuple[Decision, list[ApplicationStatus]]:
    statuses: list[ApplicationStatus] = []
    waiting: list[str] = []
    held: list[Hold] = []
    for app in stack.spec.applications:
        rollout = _rollout(observation.child("apps", "Deployment", app.name, namespace))
        statuses.append(ApplicationStatus(name=app.name, replicas=rollout.total, ready_replicas=rollout.ready))
        if app.name in facts.held_back:
            held.append(facts.held_back[app.name])
            waiting.append(f"{app.name}: {held[-1].message}")
        elif not rollout.done:
            waiting.append(f"{app.name}: {rollout.note}")
    if waiting:
        return _false(held[0].reason if held else APPLICATIONS_NOT_READY, "; ".join(waiting)), statuses
    if not statuses:
        return _true(NO_APPLICATIONS, "the stack declares no applications"), statuses
    return _true(APPLICATIONS_AVAILABLE, ", ".join(f"{s.name}: {s.ready_replicas} ready" for s in statuses)), statuses


def stack_gpu_health(stack: SovereignStack, facts: ClusterFacts) -> StackGpuHealth:
    """The GPU health of the nodes of the stack's pools (``policy.stack_gpu_health``): the
    ``GPUHealthy`` condition, the pools' GPU counts and the nodes with a fatal fault. Also what
    ``services.gpu_reaction`` compares between its checks."""
    return assess_stack_gpus(
        pools=[(pool.name, [_gpus_of(node) for node in pool_nodes(stack=stack, pool=pool, facts=facts).selected])
               for pool in stack.spec.node_pools],
        cpu_pools={pool.name for pool in stack.spec.node_pools if pool.gpu is None})


def _gpus_of(node: NodeFacts) -> NodeGpus:
    # Facts built by hand (tests, a file for ``sovereign render``) may know nothing of the GPUs.
    return node.gpu or NodeGpus(name=node.name, region=node.label(names.REGION_LABEL))


def _status_condition(obj: Manifest, kind: str) -> Mapping[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})
