"""Reconcile one SovereignStack: render, apply what differs, prune what is gone, write status once.

One pass, the same whether Kopf calls it for a create, an update, a resume after a restart, a
periodic resync or a child that changed:

1. Parse the stack (``api.parse_stack``). A spec the schema let through but the rules reject,
   or one that cannot be rendered, ends as ``Ready=False``/``InvalidSpec``, not as an exception:
   retrying cannot fix it, a new spec will.
2. Verify the stack's S3 stores against their buckets (``services.residency_stores``, whose
   ``StoreVerdicts`` contacts them only when the spec or credentials changed, or once per
   re-check period): a store failing a residency check holds back the models and applications
   that use it (``policy.residency.blocked_workloads``), which are rendered with zero replicas.
   A model whose ``cache.layout`` the cluster's StorageClasses cannot provide is held back the
   same way (``services.model_cache``). Observe the stack's children (lists by the stack label,
   kept only when owned by this incarnation of the stack; nodes come from the facts) and the
   state of its shared model caches (their loader Jobs), then render the desired objects
   (``desired_objects``: the same function ``sovereign render`` prints); a model whose shared
   cache is not filled yet has no Deployment among them, and its live one is kept as it is.
   A model with evaluation rolls out blue/green (``services.rollout``, ``policy.rollout``): its
   candidate, evaluation Job and the revision its Service selects follow from what is observed.
3. ``plan_changes``: apply each desired object the live one does not match, compared by labels
   and annotations (which include the spec hash); prune each observed child no longer desired,
   except retained data. An unchanged stack plans nothing.
4. Execute: server-side apply, delete (or release nodes). Objects the apiserver refuses are
   collected and reported on ``Ready``; the rest still go through.
5. Compute the status from the observed children (``render.status``) and apply the reconciler's
   part of it (the residency audit writes its own) only when it differs from the stored one,
   with an Event per condition whose status changed.

So an unchanged stack costs reads only. ``finalize`` is the finalizer's work on deletion:
NodePools and node labels are cluster-scoped, beyond the reach of ownerReferences.

Transient trouble (``kube.errors.Unavailable``, ``Conflict``) propagates for the caller to retry.
Called by ``handlers.stack`` and (``desired_objects``) by ``cli.render``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from sovereign.api import (
    API_VERSION,
    KIND,
    ConditionStatus,
    ConditionType,
    InvalidStackError,
    SovereignStack,
    SovereignStackStatus,
    parse_stack,
)
from sovereign import metrics
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.resources import (
    DEPLOYMENT,
    JOB,
    NETWORK_POLICY,
    NODE,
    NODE_POOL,
    PERSISTENT_VOLUME_CLAIM,
    POD_DISRUPTION_BUDGET,
    POD_MONITOR,
    SCALED_OBJECT,
    SERVICE,
    ResourceType,
    resource_type,
)
from sovereign.policy.residency import blocked_workloads
from sovereign.render import names
from sovereign.render.facts import ClusterFacts, Hold, NodeFacts
from sovereign.render.inference import waiting_for_cache
from sovereign.render.names import Component, ObjectKey, object_key
from sovereign.render.stack import RenderError, render_stack
from sovereign.render.status import (
    AUDIT_CONDITIONS,
    CHILD_REJECTED,
    INVALID_SPEC,
    Observation,
    compute_status,
    invalid_status,
    reconciler_part,
)
from sovereign.services.model_cache import observe_caches, with_cache_checks
from sovereign.services.residency_stores import StoreVerdict, StoreVerdicts
from sovereign.services.rollout import kept_by_rollouts, observe_rollouts, record_rollouts

log = logging.getLogger(__name__)

Manifest = dict[str, Any]

#: Namespaced kinds the stack may have children of, listed by label on every pass.
CHILD_KINDS = (NETWORK_POLICY, PERSISTENT_VOLUME_CLAIM, JOB, DEPLOYMENT, SERVICE, POD_DISRUPTION_BUDGET, SCALED_OBJECT,
               POD_MONITOR)
#: The keys a stack puts on a node of an Existing pool, and removes again.
_NODE_LABELS = (names.POOL_LABEL, names.STACK_LABEL, names.STACK_ID_LABEL)
_NODE_ANNOTATIONS = (names.OWNER_ANNOTATION,)


@dataclass(frozen=True)
class Plan:
    """What one pass writes: objects to apply and observed objects to prune."""

    apply: tuple[Manifest, ...] = ()
    prune: tuple[Manifest, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What one pass did."""

    applied: tuple[ObjectKey, ...]
    pruned: tuple[ObjectKey, ...]
    rejected: tuple[str, ...]
    status: SovereignStackStatus | None
    status_written: bool

    @property
    def ready(self) -> bool:
        conditions = self.status.conditions if self.status else []
        return any(c.type == ConditionType.READY.value and c.status == ConditionStatus.TRUE for c in conditions)


def desired_objects(stack: SovereignStack, facts: ClusterFacts) -> list[Manifest]:
    """Every object the stack should have, in a stable order (``render.stack.render_stack``)."""
    return render_stack(stack, facts)


def plan_changes(*, desired: Sequence[Manifest], observed: Mapping[ObjectKey, Manifest],
                 keep: Iterable[ObjectKey] = ()) -> Plan:
    """Apply what the live objects do not carry; prune observed objects no longer desired, except
    retained data and ``keep`` (objects left as they are this pass: the Deployment of a model
    whose new cache is filling)."""
    wanted = {object_key(obj) for obj in desired} | set(keep)
    return Plan(
        apply=tuple(obj for obj in desired if not _carries(observed.get(object_key(obj)), obj)),
        prune=tuple(
            obj for key, obj in sorted(observed.items()) if key not in wanted and not _retained(obj)
        ),
    )


def reconcile(*, kube: Kube, body: Mapping[str, Any], facts: ClusterFacts, stores: StoreVerdicts,
              now: datetime | None = None) -> Outcome:
    """One reconcile pass over the stack ``body`` (as the apiserver returned it); ``stores``
    gives the verdicts of its S3 stores."""
    began = time.monotonic()
    now = now or datetime.now(UTC)
    meta = body["metadata"]
    previous = _stored_status(body)
    if meta.get("deletionTimestamp"):
        return Outcome((), (), (), previous, False)
    try:
        stack = parse_stack({key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body})
        facts = with_store_verdicts(facts, stack=stack, verdicts=stores.verdicts(kube=kube, stack=stack))
        facts = with_cache_checks(facts, stack=stack)
        # Observed before rendering: whether a shared cache is filled decides whether its
        # model's Deployment is rendered.
        observed, unserved = _observe(kube, stack, facts)
        # The same list tells whether the Prometheus Operator is installed: its PodMonitors
        # are rendered only then, so a cluster without it is not told to apply what it cannot hold.
        facts = replace(facts, caches=observe_caches(kube=kube, stack=stack, children=observed),
                        pod_monitors=POD_MONITOR not in unserved,
                        rollouts=observe_rollouts(kube=kube, stack=stack, children=observed, previous=previous,
                                                  now=now))
        desired = desired_objects(stack, facts)
    except (InvalidStackError, RenderError) as err:
        message = "; ".join(map(str, err.errors)) if isinstance(err, InvalidStackError) else str(err)
        status = invalid_status(generation=meta.get("generation"), previous=previous, message=message, now=now)
        outcome = Outcome((), (), (), status, _write_status(kube, body, previous, status))
        _record(meta, outcome, children={}, seconds=time.monotonic() - began, error=INVALID_SPEC)
        return outcome
    plan = plan_changes(desired=desired, observed=observed,
                        keep=[*kept_as_is(stack=stack, facts=facts, observed=observed),
                              *kept_by_rollouts(stack=stack, decisions=facts.rollouts or {})])
    children, applied, pruned, rejected = _execute(kube, stack, plan, observed)
    observation = Observation(children=children, rejected=rejected)
    status = compute_status(stack=stack, facts=facts, observation=observation, previous=previous, now=now)
    outcome = Outcome(tuple(applied), tuple(pruned), tuple(rejected), status, _write_status(kube, body, previous, status))
    record_rollouts(kube=kube, body=body, previous=previous, decisions=facts.rollouts or {})
    _record(meta, outcome, children=children, seconds=time.monotonic() - began,
            error=CHILD_REJECTED if rejected else None)
    return outcome


def with_store_verdicts(facts: ClusterFacts, *, stack: SovereignStack, verdicts: Sequence[StoreVerdict]) -> ClusterFacts:
    """``facts`` with the stack's S3 stores as verified, and the workloads a failed store or a
    missing model file holds back."""
    failed = {verdict.name: verdict.decision for verdict in verdicts if not verdict.ok}
    missing = {model: decision for verdict in verdicts for model, decision in verdict.models.items() if not decision.ok}
    held = blocked_workloads(stack=stack, failed_stores=failed, failed_sources=missing)
    return replace(facts, data_stores={verdict.name: verdict.status for verdict in verdicts},
                   held_back={name: Hold(decision.reason, decision.message) for name, decision in held.items()})


def finalize(*, kube: Kube, body: Mapping[str, Any]) -> list[ObjectKey]:
    """Remove the stack's cluster-scoped effects (NodePools, node labels); what was removed.

    Namespaced children go with the stack through their ownerReferences; retained volume claims
    have none, so they stay.
    """
    meta = body["metadata"]
    owner = f"{meta['namespace']}/{meta['name']}"
    selector = names.stack_selector(meta["name"])
    removed: list[ObjectKey] = []
    for nodepool in _list_if_served(kube, NODE_POOL, selector=selector):
        if _annotation(nodepool, names.OWNER_ANNOTATION) == owner:
            kube.delete(NODE_POOL, name=nodepool["metadata"]["name"], uid=nodepool["metadata"].get("uid"))
            removed.append(object_key(nodepool))
    for node in kube.list(NODE, selector=selector):
        if _annotation(node, names.OWNER_ANNOTATION) == owner:
            _release_node(kube, node["metadata"]["name"])
            removed.append(object_key(node))
    return removed


# --- observe -----------------------------------------------------------------------------------


def _observe(kube: Kube, stack: SovereignStack,
             facts: ClusterFacts) -> tuple[dict[ObjectKey, Manifest], frozenset[ResourceType]]:
    """The stack's children as they are: namespaced ones it controls, NodePools and nodes it
    owns; and the child kinds the cluster does not serve (their CRD is not installed)."""
    namespace = names.stack_namespace(stack)
    selector = names.stack_selector(names.stack_name(stack))
    uid = stack.metadata.uid
    owner = names.owner_id(stack)
    children: dict[ObjectKey, Manifest] = {}
    unserved: set[ResourceType] = set()
    for kind in CHILD_KINDS:
        try:
            items = kube.list(kind, namespace=namespace, selector=selector)
        except errors.NotServed:
            unserved.add(kind)
            continue
        for item in items:
            if _controlled_by(item, uid):
                children[object_key(item)] = item
    for nodepool in _list_if_served(kube, NODE_POOL, selector=selector):
        if _annotation(nodepool, names.OWNER_ANNOTATION) == owner:
            children[object_key(nodepool)] = nodepool
    for node in facts.nodes:
        if node.owner == owner:
            children[ObjectKey("", "Node", "", node.name)] = _node_manifest(node)
    return children, frozenset(unserved)


def _list_if_served(kube: Kube, kind: Any, *, namespace: str | None = None, selector: str) -> list[Manifest]:
    """A list, empty when the kind's CRD is not installed (nothing of it can exist then)."""
    try:
        return kube.list(kind, namespace=namespace, selector=selector)
    except errors.NotServed:
        return []


def _controlled_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether ``obj`` is this stack's: controlled by it, or (retained data, which has no owner)
    uncontrolled and stamped by the operator. Objects controlled by something else, such as a
    pod's ephemeral weights claim, carry the stack label but are not the stack's to prune."""
    controllers = [ref for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("controller")]
    if controllers:
        return any(ref.get("uid") == uid for ref in controllers)
    return names.SPEC_HASH_ANNOTATION in (obj["metadata"].get("annotations") or {})


def _node_manifest(node: NodeFacts) -> Manifest:
    """A node as far as the stack is concerned: its labels and owner annotation."""
    annotations = {names.OWNER_ANNOTATION: node.owner} if node.owner else {}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": dict(node.labels), "annotations": annotations}}


# --- plan and execute --------------------------------------------------------------------------


def _carries(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether the live object has every label and annotation of the desired one. Owned objects
    carry the spec hash among their annotations, so this is the hash comparison; for a node it
    compares exactly the keys the stack puts there."""
    if live is None:
        return False
    if live["kind"] == "Job":
        # A cache's loader Job runs once: its pod template cannot change, and the cache it
        # filled is named after everything the Job copies, so one that exists is the one wanted.
        return True
    for part in ("labels", "annotations"):
        have = live["metadata"].get(part) or {}
        if any(have.get(key) != value for key, value in (desired["metadata"].get(part) or {}).items()):
            return False
    return True


def kept_as_is(*, stack: SovereignStack, facts: ClusterFacts,
               observed: Mapping[ObjectKey, Manifest]) -> list[ObjectKey]:
    """Children a pass neither applies nor prunes: the live inference objects of a model whose
    new shared cache fills (its Deployments, a revision's included, and ScaledObject: what
    serves now keeps serving), and the claims the live Deployments' templates mount (a
    superseded cache stays while replicas may still start on it, and goes in the pass after the
    rollout moved them to the new one)."""
    filling = set(waiting_for_cache(stack=stack, facts=facts))
    kept = [key for key, obj in observed.items()
            if (obj["metadata"].get("labels") or {}).get(names.COMPONENT_LABEL) == Component.INFERENCE.value
            and (obj["metadata"].get("labels") or {}).get(names.NAME_LABEL) in filling]
    mounted = [ObjectKey("", "PersistentVolumeClaim", key.namespace, volume["persistentVolumeClaim"]["claimName"])
               for key, obj in observed.items() if key.kind == "Deployment"
               for volume in ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []
               if "persistentVolumeClaim" in volume]
    return kept + mounted


def _retained(obj: Mapping[str, Any]) -> bool:
    """Whether a child no longer desired stays: retained data does, but not a model cache that
    a new source superseded (a copy of what is still in the bucket; Kubernetes keeps the claim
    until the replicas reading it are gone). Retain keeps a cache when the stack is deleted."""
    component = (obj["metadata"].get("labels") or {}).get(names.COMPONENT_LABEL)
    return (_annotation(obj, names.DELETION_POLICY_ANNOTATION) == "Retain"
            and component != Component.MODEL_CACHE.value)


def _execute(
    kube: Kube, stack: SovereignStack, plan: Plan, observed: Mapping[ObjectKey, Manifest]
) -> tuple[dict[ObjectKey, Manifest], list[ObjectKey], list[ObjectKey], list[str]]:
    children = dict(observed)
    applied: list[ObjectKey] = []
    pruned: list[ObjectKey] = []
    rejected: list[str] = []
    for obj in plan.apply:
        key = object_key(obj)
        try:
            if key.kind == "Node":
                try:
                    children[key] = kube.merge_patch(NODE, name=key.name, patch={"metadata": obj["metadata"]})
                except errors.NotFound:
                    continue  # the node left the cluster since the facts were taken
            else:
                if key not in observed:
                    taken = _taken_by(kube.get(resource_type(obj), name=key.name, namespace=key.namespace or None), stack)
                    if taken:
                        rejected.append(f"{key} already exists and belongs to {taken}; rename the entry or remove it")
                        continue
                children[key] = kube.apply(obj)
            applied.append(key)
        except (errors.Invalid, errors.Forbidden, errors.NotServed) as err:
            # Sending the same object again cannot succeed; Ready says so until the spec changes.
            rejected.append(str(err))
    for obj in plan.prune:
        key = object_key(obj)
        if key.kind == "Node":
            _release_node(kube, key.name)
        else:
            kube.delete(resource_type(obj), name=key.name, namespace=key.namespace or None,
                        uid=obj["metadata"].get("uid"))
        children.pop(key, None)
        pruned.append(key)
    if applied or pruned:
        log.info("stack %s: applied %s; pruned %s", names.owner_id(stack),
                 ", ".join(map(str, applied)) or "nothing", ", ".join(map(str, pruned)) or "nothing")
    return children, applied, pruned, rejected


def _taken_by(live: Mapping[str, Any] | None, stack: SovereignStack) -> str | None:
    """Who else an existing namesake belongs to; None when the stack may adopt it."""
    if live is None:
        return None
    meta = live["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") != stack.metadata.uid:
            return f"{ref.get('kind')} {ref.get('name')}"
    label = (meta.get("labels") or {}).get(names.STACK_LABEL)
    if label is not None and label != names.stack_name(stack):
        return f"stack {label}"
    owner = _annotation(live, names.OWNER_ANNOTATION)
    if owner is not None and owner != names.owner_id(stack):
        return f"stack {owner}"
    return None


def _release_node(kube: Kube, name: str) -> None:
    """Take the stack's labels and annotation off a node (a node already gone needs nothing)."""
    patch = {"metadata": {"labels": dict.fromkeys(_NODE_LABELS), "annotations": dict.fromkeys(_NODE_ANNOTATIONS)}}
    try:
        kube.merge_patch(NODE, name=name, patch=patch)
    except errors.NotFound:
        pass


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(key)


# --- status ------------------------------------------------------------------------------------


def _stored_status(body: Mapping[str, Any]) -> SovereignStackStatus | None:
    stored = body.get("status")
    if not stored:
        return None
    try:
        return SovereignStackStatus.model_validate(stored)
    except ValidationError:
        # Written by something else, or by a future version: computed afresh.
        return None


def _write_status(kube: Kube, body: Mapping[str, Any], previous: SovereignStackStatus | None,
                  status: SovereignStackStatus) -> bool:
    """Apply the reconciler's part of the status when it differs from the stored one; an Event
    per condition of that part whose status changed."""
    new = reconciler_part(status)
    if new == reconciler_part(previous):
        return False
    meta = body["metadata"]
    try:
        kube.apply_status({"apiVersion": API_VERSION, "kind": KIND,
                           "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": new})
    except errors.NotFound:
        return False  # deleted meanwhile: nobody to tell
    before = {c.type: c.status for c in (previous.conditions if previous else [])}
    stack_ref = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta}
    for condition in status.conditions:
        if condition.type in AUDIT_CONDITIONS or before.get(condition.type) == condition.status:
            continue
        try:
            kube.record_event(
                regarding=stack_ref,
                type="Warning" if condition.status == ConditionStatus.FALSE else "Normal",
                reason=condition.reason,
                message=f"{condition.type} is {condition.status.value}: {condition.message}",
            )
        except (errors.Forbidden, errors.Invalid) as err:
            # The status is written; a missing Event is worth a log line, not a retry.
            log.warning("stack %s/%s: %s", meta["namespace"], meta["name"], err)
    return True


# --- metrics -----------------------------------------------------------------------------------


def _record(meta: Mapping[str, Any], outcome: Outcome, *, children: Mapping[ObjectKey, Manifest], seconds: float,
            error: str | None) -> None:
    """The pass in the operator's metrics (``sovereign.metrics``): what the dashboards show."""
    stack = {"namespace": meta["namespace"], "stack": meta["name"]}
    metrics.RECONCILE_DURATION.labels(**stack).observe(seconds)
    if error:
        metrics.RECONCILE_ERRORS.labels(**stack, reason=error).inc()
    for operation, keys in (("apply", outcome.applied), ("prune", outcome.pruned)):
        for key in keys:
            metrics.OBJECT_WRITES.labels(**stack, kind=key.kind, operation=operation).inc()
    status = outcome.status
    if status is None:
        return
    metrics.STACK_READY.labels(**stack).set(1 if outcome.ready else 0)
    for condition in status.conditions:
        for value in ConditionStatus:
            metrics.STACK_CONDITION.labels(**stack, condition=condition.type, status=value.value).set(
                1 if condition.status == value else 0)
    for model in status.models:
        deployment = children.get(ObjectKey("apps", "Deployment", meta["namespace"],
                                            _serving_deployment(children, meta["namespace"], model.name))) or {}
        metrics.MODEL_REPLICAS.labels(**stack, model=model.name).set((deployment.get("spec") or {}).get("replicas", 0))
        metrics.MODEL_READY_REPLICAS.labels(**stack, model=model.name).set(model.ready_replicas)


def _serving_deployment(children: Mapping[ObjectKey, Manifest], namespace: str, model: str) -> str:
    """The Deployment behind a model's Service: the revision it selects (a model with
    evaluation), else the model's own."""
    revision = names.selected_revision(children.get(ObjectKey("", "Service", namespace, model)))
    return names.revision_name(model=model, revision=revision) if revision else model
