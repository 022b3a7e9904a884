"""Residency admission: what each webhook decides, and keeping the cluster pointed at them.

The webhooks (``WEBHOOKS``), each served by the Kopf handler of the same id in
``handlers.admission``:

- ``pod-region-affinity`` (mutating, Pod CREATE): gives a pod of a governed namespace the
  required node affinity to the allowed regions (``policy.residency.pinned_affinity``);
- ``pod-residency``, ``claim-residency``, ``service-exposure`` (validating): judge pods,
  PersistentVolumeClaims and Services of governed namespaces;
- ``stack-residency`` (validating, every namespace): judges a SovereignStack's own pools and volumes.

A failed rule denies in ``Enforce`` mode and admits with a warning in ``Audit`` mode (the audit
timer then records it as a violation). Updates are judged only when the fields a rule reads
changed, so an object admitted earlier (before its namespace was governed, or in Audit mode)
can still be relabelled, scaled or finalized. Every decision is counted in
``sovereign_webhook_decisions_total``.

``publish_webhooks`` applies the webhook configurations for the endpoint Kopf's server listens
on; ``govern_namespace`` keeps the ``sovereign.ai/governed`` label of a namespace in step with
its stacks. Called by ``handlers.admission`` and ``handlers.residency``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from sovereign.api import (
    GROUP,
    PLURAL,
    VERSION,
    InvalidStackError,
    Residency,
    parse_stack,
)
from sovereign.kube.admission import (
    PERSISTENT_VOLUME,
    Webhook,
    apply_webhook_configurations,
    set_governed,
    webhook_configurations,
)
from sovereign.kube.client import Kube
from sovereign.kube.resources import STACK
from sovereign.metrics import WEBHOOK_DECISIONS
from sovereign.policy import residency as policy
from sovereign.policy.residency_store import Decision

Manifest = Mapping[str, Any]

POD_AFFINITY = Webhook("pod-region-affinity", mutating=True, group="", version="v1", plural="pods",
                       operations=("CREATE",))
POD_RESIDENCY = Webhook("pod-residency", mutating=False, group="", version="v1", plural="pods",
                        operations=("CREATE", "UPDATE"))
CLAIM_RESIDENCY = Webhook("claim-residency", mutating=False, group="", version="v1",
                          plural="persistentvolumeclaims", operations=("CREATE",))
SERVICE_EXPOSURE = Webhook("service-exposure", mutating=False, group="", version="v1", plural="services",
                           operations=("CREATE", "UPDATE"))
# A stack is judged wherever it is created: its namespace is governed only once it exists. It
# fails open: while the operator is down a stack does nothing (nothing reconciles it), and the
# audit judges its spec again once the operator is back.
STACK_RESIDENCY = Webhook("stack-residency", mutating=False, group=GROUP, version=VERSION, plural=PLURAL,
                          operations=("CREATE", "UPDATE"), governed_only=False)
WEBHOOKS = (POD_AFFINITY, POD_RESIDENCY, CLAIM_RESIDENCY, SERVICE_EXPOSURE, STACK_RESIDENCY)

NOT_GOVERNED = "NotGoverned"
UNCHANGED = "Unchanged"

# Fields each rule reads: an update that leaves them alone is not judged again.
_POD_PLACEMENT = ("nodeName", "nodeSelector", "affinity")
_SERVICE_EXPOSURE = ("type", "externalIPs", "externalName")


class Review(NamedTuple):
    """A validating webhook's answer: deny with ``decision.message``, or admit (with it as a
    warning when ``audited``: a failed rule in Audit mode)."""

    allowed: bool
    audited: bool
    decision: Decision


def review_pod(*, pod: Manifest, old: Manifest | None, governance: policy.Governance, kube: Kube) -> Review:
    if old is not None and _same(pod, old, _POD_PLACEMENT):
        return _pass(POD_RESIDENCY, "Pod", UNCHANGED, "scheduling constraints unchanged")
    scope = _scope(pod, governance, kube)
    if scope is None:
        return _ungoverned(POD_RESIDENCY, "Pod")
    return _verdict(POD_RESIDENCY, "Pod", policy.check_pod(pod=pod, scope=scope, topology=governance.topology),
                    enforce=scope.enforce)


def review_claim(*, claim: Manifest, governance: policy.Governance, kube: Kube) -> Review:
    scope = _scope(claim, governance, kube)
    if scope is None:
        return _ungoverned(CLAIM_RESIDENCY, "PersistentVolumeClaim")
    spec = claim.get("spec") or {}
    # A claim for a pre-provisioned volume names it; that volume's topology is what counts.
    volume = kube.get(PERSISTENT_VOLUME, name=spec["volumeName"]) if spec.get("volumeName") else None
    decision = policy.check_claim(claim=claim, scope=scope, topology=governance.topology, volume=volume,
                                  storage_class=governance.storage_class(spec.get("storageClassName")))
    return _verdict(CLAIM_RESIDENCY, "PersistentVolumeClaim", decision, enforce=scope.enforce)


def review_service(*, service: Manifest, old: Manifest | None, governance: policy.Governance,
                   kube: Kube) -> Review:
    if old is not None and _same(service, old, _SERVICE_EXPOSURE):
        return _pass(SERVICE_EXPOSURE, "Service", UNCHANGED, "exposure unchanged")
    scope = _scope(service, governance, kube)
    if scope is None:
        return _ungoverned(SERVICE_EXPOSURE, "Service")
    return _verdict(SERVICE_EXPOSURE, "Service", policy.check_service(service=service, scope=scope),
                    enforce=scope.enforce)


def review_stack(*, body: Manifest, old: Manifest | None, governance: policy.Governance) -> Review:
    if old is not None and body.get("spec") == old.get("spec"):
        return _pass(STACK_RESIDENCY, "SovereignStack", UNCHANGED, "spec unchanged")
    try:
        stack = parse_stack({key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body})
    except InvalidStackError as err:
        # The CRD's schema passed it; the reconciler reports what its rules reject, field by field.
        return _pass(STACK_RESIDENCY, "SovereignStack", "InvalidSpec", str(err))
    decision = policy.check_stack(stack=stack, body=body, storage_classes=governance.storage_classes,
                                  topology=governance.topology)
    return _verdict(STACK_RESIDENCY, "SovereignStack", decision, enforce=policy.stack_scope(stack).enforce)


def region_affinity(*, pod: Manifest, governance: policy.Governance, kube: Kube) -> dict[str, Any] | None:
    """The affinity a new pod must get (None: leave it as it is), counted as ``mutated``."""
    scope = _scope(pod, governance, kube)
    if scope is None:
        return None
    affinity = policy.pinned_affinity(pod=pod, regions=scope.regions, topology=governance.topology)
    WEBHOOK_DECISIONS.labels(POD_AFFINITY.id, "Pod", "mutated" if affinity else "allowed",
                             "RegionAffinity" if affinity else policy.IN_REGIONS).inc()
    return affinity


def publish_webhooks(*, kube: Kube, client_config: Mapping[str, Any]) -> None:
    """Point the cluster's webhook configurations at the endpoint ``client_config`` describes."""
    apply_webhook_configurations(kube, webhook_configurations(webhooks=WEBHOOKS, client_config=client_config))


def govern_namespace(*, kube: Kube, namespace: str, governance: policy.Governance) -> bool:
    """Label ``namespace`` governed while it holds a stack, and not once the last one is gone."""
    return set_governed(kube, namespace=namespace, governed=bool(governance.stacks.get(namespace)))


def _scope(obj: Manifest, governance: policy.Governance, kube: Kube) -> policy.Scope | None:
    """The rules for ``obj``, from the operator's index of stacks.

    Only governed namespaces are sent here, so an index without a stack for the namespace is
    still filling (the operator just started) or a step behind a deletion: the stacks are then
    read from the API rather than letting the object through unjudged.
    """
    namespace, labels = _namespace(obj), _labels(obj)
    scope = governance.scope(namespace=namespace, labels=labels)
    if scope is not None:
        return scope
    stacks = {}
    for stack in kube.list(STACK, namespace=namespace):
        try:
            stacks[stack["metadata"]["name"]] = Residency.model_validate((stack.get("spec") or {}).get("residency"))
        except ValidationError:
            continue  # an invalid stack is reported by the reconciler and governs nothing
    return policy.scope_for(namespace=namespace, stacks=stacks, labels=labels)


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


def _same(new: Manifest, old: Manifest, fields: tuple[str, ...]) -> bool:
    before, after = old.get("spec") or {}, new.get("spec") or {}
    return all(before.get(name) == after.get(name) for name in fields)


def _namespace(obj: Manifest) -> str:
    return (obj.get("metadata") or {}).get("namespace") or ""


def _labels(obj: Manifest) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}
