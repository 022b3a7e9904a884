"""Residency admission: the lookups the apiserver's policies cannot make, and keeping the cluster set up.

Every rule CEL can decide from the object and the namespace's parameters runs inside the
apiserver (``policy.residency_admission``). What is left needs a lookup, and is served by the
operator's lean webhook (``handlers.admission``), one webhook each (``WEBHOOKS``):

- ``pod-node`` (Pod create, only when it names a node: ``spec.nodeName``, a node selector on
  ``kubernetes.io/hostname``, a required affinity on it or on ``metadata.name``): the named
  nodes' regions, with every other constraint of the pod;
- ``pod-binding`` (``pods/binding`` create, except by the scheduler, which honours the region
  affinity the policies guarantee): the region of the node a pod is bound to;
- ``claim-residency`` (PersistentVolumeClaim create): the volume it names, else the class that
  will provision it;
- ``stack-residency`` (SovereignStack create and spec update, every namespace): the stack's
  own pools and volume classes.

Each lookup reads the API directly (the namespace's stacks, one node, one class or volume), never
a reconcile pass's state. A failed rule denies in ``Enforce`` mode and admits with a warning in
``Audit`` mode; every decision is counted in ``sovereign_webhook_decisions_total``.

``install_admission`` applies the policies, their bindings and the webhook configuration;
``govern_namespace`` keeps a namespace's labels and residency parameters in step with its stacks.
Called by ``handlers.admission`` and ``handlers.residency``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import ValidationError

from sovereign.api import GROUP, PLURAL, VERSION, InvalidStackError, Residency, parse_stack
from sovereign.kube.admission import (
    PERSISTENT_VOLUME,
    STORAGE_CLASS,
    Webhook,
    apply_admission_policies,
    apply_webhook_configuration,
    set_namespace_metadata,
    webhook_configuration,
)
from sovereign.kube.client import Kube
from sovereign.kube.resources import NODE, POD, STACK
from sovereign.metrics import WEBHOOK_DECISIONS
from sovereign.policy import residency as policy
from sovereign.policy import residency_admission as cel
from sovereign.policy.residency_store import Decision

Manifest = Mapping[str, Any]

SCHEDULER = "system:kube-scheduler"
_NAMES_A_NODE = (
    "object.spec.?nodeName.orValue('') != '' || "
    "object.spec.?nodeSelector.orValue({}).exists(k, k == 'kubernetes.io/hostname') || "
    "object.spec.?affinity.?nodeAffinity.?requiredDuringSchedulingIgnoredDuringExecution.?nodeSelectorTerms"
    ".orValue([]).exists(t, t.?matchExpressions.orValue([]).exists(e, e.key == 'kubernetes.io/hostname') || "
    "t.?matchFields.orValue([]).exists(f, f.key == 'metadata.name'))")
POD_NODE = Webhook("pod-node", group="", version="v1", plural="pods", operations=("CREATE",),
                   match_conditions=(("names-a-node", _NAMES_A_NODE),))
POD_BINDING = Webhook("pod-binding", group="", version="v1", plural="pods/binding", operations=("CREATE",),
                      match_conditions=(("not-the-scheduler", f"request.userInfo.username != '{SCHEDULER}'"),))
CLAIM_RESIDENCY = Webhook("claim-residency", group="", version="v1", plural="persistentvolumeclaims",
                          operations=("CREATE",))
# A stack is judged wherever it is created: its namespace is governed only once it exists. It
# fails open: while the operator is down a stack does nothing (nothing reconciles it), and the
# audit judges its spec again once the operator is back.
STACK_RESIDENCY = Webhook("stack-residency", group=GROUP, version=VERSION, plural=PLURAL,
                          operations=("CREATE", "UPDATE"), governed_only=False)
WEBHOOKS = (POD_NODE, POD_BINDING, CLAIM_RESIDENCY, STACK_RESIDENCY)

NOT_GOVERNED = "NotGoverned"
UNCHANGED = "Unchanged"


class Review(NamedTuple):
    """A validating webhook's answer: deny with ``decision.message``, or admit (with it as a
    warning when ``audited``: a failed rule in Audit mode)."""

    allowed: bool
    audited: bool
    decision: Decision


def review_pod_node(*, pod: Manifest, kube: Kube) -> Review:
    """A pod created naming a node: the nodes it names must be in the allowed regions."""
    scope = _scope(pod, kube)
    if scope is None:
        return _ungoverned(POD_NODE, "Pod")
    decision = policy.check_pod(pod=pod, scope=scope, topology=_governance(kube, classes=False).topology)
    return _verdict(POD_NODE, "Pod", decision, enforce=scope.enforce)


def review_binding(*, binding: Manifest, kube: Kube) -> Review:
    """A pod bound to a node through the ``binding`` subresource: that node must be in the regions."""
    meta = binding.get("metadata") or {}
    node = (binding.get("target") or {}).get("name", "")
    # The binding carries the pod's name; its labels (which stack it answers to) are on the pod.
    pod = kube.get(POD, name=meta.get("name", ""), namespace=meta.get("namespace")) or {
        "metadata": {"name": meta.get("name", ""), "namespace": meta.get("namespace")}}
    scope = _scope(pod, kube)
    if scope is None:
        return _ungoverned(POD_BINDING, "Pod")
    decision = policy.check_pod_node(pod=pod, node=node, scope=scope, topology=_node_topology(kube, node))
    return _verdict(POD_BINDING, "Pod", decision, enforce=scope.enforce)


def review_claim(*, claim: Manifest, kube: Kube) -> Review:
    scope = _scope(claim, kube)
    if scope is None:
        return _ungoverned(CLAIM_RESIDENCY, "PersistentVolumeClaim")
    spec = claim.get("spec") or {}
    # A claim for a pre-provisioned volume names it; that volume's topology is what counts.
    volume = kube.get(PERSISTENT_VOLUME, name=spec["volumeName"]) if spec.get("volumeName") else None
    governance = _governance(kube, classes=True)
    decision = policy.check_claim(claim=claim, scope=scope, topology=governance.topology, volume=volume,
                                  storage_class=governance.storage_class(spec.get("storageClassName")))
    return _verdict(CLAIM_RESIDENCY, "PersistentVolumeClaim", decision, enforce=scope.enforce)


def review_stack(*, body: Manifest, old: Manifest | None, kube: Kube) -> Review:
    if old is not None and body.get("spec") == old.get("spec"):
        return _pass(STACK_RESIDENCY, "SovereignStack", UNCHANGED, "spec unchanged")
    try:
        stack = parse_stack({key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body})
    except InvalidStackError as err:
        # The CRD's schema passed it; the reconciler reports what its rules reject, field by field.
        return _pass(STACK_RESIDENCY, "SovereignStack", "InvalidSpec", str(err))
    governance = _governance(kube, classes=True)
    decision = policy.check_stack(stack=stack, body=body, storage_classes=governance.storage_classes,
                                  topology=governance.topology)
    return _verdict(STACK_RESIDENCY, "SovereignStack", decision, enforce=policy.stack_scope(stack).enforce)


def install_admission(*, kube: Kube, client_config: Mapping[str, Any], operator_users: Sequence[str]) -> None:
    """Apply the residency policies and bindings, then point the webhook configuration at the
    lookup server ``client_config`` describes."""
    apply_admission_policies(kube, cel.admission_policies(operator_users=operator_users))
    apply_webhook_configuration(kube, webhook_configuration(webhooks=WEBHOOKS, client_config=client_config))


def govern_namespace(*, kube: Kube, namespace: str, governance: policy.Governance) -> bool:
    """Keep ``namespace``'s parameters and labels as its stacks say: governed with the strictest
    rules of all of them while it holds one, and neither once the last one is gone."""
    scope = governance.scope(namespace=namespace, labels=None)
    return set_namespace_metadata(kube, namespace=namespace, metadata=cel.namespace_metadata(scope=scope))


def _scope(obj: Manifest, kube: Kube) -> policy.Scope | None:
    """The rules for ``obj``, from the stacks of its namespace as the API has them now."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    stacks = {}
    for stack in kube.list(STACK, namespace=namespace):
        try:
            stacks[stack["metadata"]["name"]] = Residency.model_validate((stack.get("spec") or {}).get("residency"))
        except ValidationError:
            continue  # an invalid stack is reported by the reconciler and governs nothing
    return policy.scope_for(namespace=namespace, stacks=stacks, labels=meta.get("labels"))


def _node_topology(kube: Kube, node: str) -> policy.Topology:
    found = kube.get(NODE, name=node) if node else None
    return policy.Topology.from_nodes([found] if found else [])


def _governance(kube: Kube, *, classes: bool) -> policy.Governance:
    """The nodes' topology and (``classes``) the StorageClasses, read now."""
    storage_classes = {sc["metadata"]["name"]: sc for sc in kube.list(STORAGE_CLASS)} if classes else {}
    return policy.Governance(topology=policy.Topology.from_nodes(kube.list(NODE)), storage_classes=storage_classes)


def _verdict(hook: Webhook, kind: str, decision: Decision, *, enforce: bool) -> Review:
    if decision.ok:
        outcome = Review(True, False, decision)
    else:
        outcome = Review(not enforce, not enforce, decision)
    label = "allowed" if decision.ok else "denied" if enforce else "audited"
    WEBHOOK_DECISIONS.labels(hook.id, kind, label, decision.reason).inc()
    return outcome


def _pass(hook: Webhook, kind: str, reason: str, message: str) -> Review:
    WEBHOOK_DECISIONS.labels(hook.id, kind, "allowed", reason).inc()
    return Review(True, False, Decision(True, reason, message))


def _ungoverned(hook: Webhook, kind: str) -> Review:
    # The namespace is labelled but its last stack is gone; the label goes shortly.
    return _pass(hook, kind, NOT_GOVERNED, "no stack governs the namespace")
