"""Kopf handlers of residency: the indexes residency decisions read, governed namespaces, the audit.

``install(registry, kube=..., config=...)`` registers, on one Kopf registry:

- three indexes, so a decision reads memory instead of the API: ``residency_stacks`` (namespace
  -> each stack's name and ``spec.residency``), ``residency_nodes`` (each node's name, region and
  zone) and ``residency_storage_classes`` (name -> class); ``governance(...)`` turns them into the
  ``policy.residency.Governance`` the governance of namespaces and the audit read;
- on every event of a stack (its first listing, changes, deletion): the namespace's residency
  parameters (the annotations the admission policies read) and its ``sovereign.ai/governed`` and
  ``sovereign.ai/enforcement`` labels, kept while a stack is there and removed once the last one is
  gone; on every event of a governed namespace: the same (one deleted while the operator was down);
- a timer per stack every ``audit_seconds``: ``services.residency_audit.audit_stack``, after
  checking the namespace's parameters and labels again.

An audit that fails on API trouble is logged and runs again next period. Called by ``cli.run``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from sovereign.api import GROUP, PLURAL, VERSION, Residency
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.resources import STACK
from sovereign.policy.residency import REGION_LABEL, ZONE_LABEL, Governance, Topology
from sovereign.render.names import GOVERNED_LABEL
from sovereign.services.admission import govern_namespace
from sovereign.services.residency_audit import audit_stack

log = logging.getLogger(__name__)

_STACKS = (GROUP, VERSION, PLURAL)
DEFAULT_AUDIT_SECONDS = 60.0


@dataclass(frozen=True)
class ResidencyConfig:
    """How the residency audit runs (from ``sovereign run`` options)."""

    audit_seconds: float = DEFAULT_AUDIT_SECONDS


def governance(residency_stacks: kopf.Index, residency_nodes: kopf.Index,
               residency_storage_classes: kopf.Index) -> Governance:
    """The indexes as the policies read them."""
    stacks: dict[str, dict[str, Residency]] = {}
    for namespace, entries in residency_stacks.items():
        for name, residency in entries:
            if residency is not None:
                stacks.setdefault(namespace, {})[name] = residency
    classes = {sc["metadata"]["name"]: sc for entries in residency_storage_classes.values() for sc in entries}
    return Governance(stacks=stacks, topology=Topology.from_nodes(residency_nodes.get(None, [])),
                      storage_classes=classes)


def install(registry: kopf.OperatorRegistry, *, kube: Kube, config: ResidencyConfig) -> None:
    """Register the residency indexes, the governed-namespace label and the audit on ``registry``."""

    @kopf.index(*_STACKS, id="residency_stacks", registry=registry)
    def residency_stacks(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[str, tuple]:
        try:
            residency = Residency.model_validate(dict(spec).get("residency"))
        except ValidationError:
            residency = None  # the CRD lets nothing like it through; the reconciler would report it
        return {namespace: (name, residency)}

    @kopf.index("", "v1", "nodes", id="residency_nodes", registry=registry)
    def residency_nodes(name: str, labels: kopf.Labels, **_: Any) -> dict[None, dict]:
        kept = {key: labels[key] for key in (REGION_LABEL, ZONE_LABEL) if key in labels}
        return {None: {"metadata": {"name": name, "labels": kept}}}

    @kopf.index("storage.k8s.io", "v1", "storageclasses", id="residency_storage_classes", registry=registry)
    def residency_storage_classes(name: str, body: kopf.Body, **_: Any) -> dict[str, dict]:
        return {name: {key: body[key] for key in ("metadata", "allowedTopologies", "volumeBindingMode")
                       if key in body}}

    @kopf.on.event(*_STACKS, id="residency-governance", registry=registry)
    def stack_seen(namespace: str, residency_stacks: kopf.Index, residency_nodes: kopf.Index,
                   residency_storage_classes: kopf.Index, **_: Any) -> None:
        _govern(namespace, governance(residency_stacks, residency_nodes, residency_storage_classes))

    @kopf.on.event("", "v1", "namespaces", id="residency-governed-namespace", labels={GOVERNED_LABEL: "true"},
                   registry=registry)
    def governed_namespace_seen(name: str, residency_stacks: kopf.Index, residency_nodes: kopf.Index,
                                residency_storage_classes: kopf.Index, **_: Any) -> None:
        _govern(name, governance(residency_stacks, residency_nodes, residency_storage_classes))

    @kopf.timer(*_STACKS, id="residency-audit", interval=config.audit_seconds, registry=registry)
    def audit(namespace: str, name: str, residency_stacks: kopf.Index, residency_nodes: kopf.Index,
              residency_storage_classes: kopf.Index, **_: Any) -> None:
        view = governance(residency_stacks, residency_nodes, residency_storage_classes)
        _govern(namespace, view)
        try:
            # Read afresh: the body Kopf holds may predate the status the last audit wrote, and
            # comparing with that would write again.
            body = kube.get(STACK, name=name, namespace=namespace)
            result = audit_stack(kube=kube, body=body, governance=view) if body is not None else None
        except errors.KubeError as err:
            log.warning("residency audit of stack %s/%s failed, trying again next period: %s", namespace, name, err)
            return
        if result is not None and result.written:
            log.info("stack %s/%s: %d residency violation(s); ResidencyCompliant=%s", namespace, name,
                     len(result.violations), result.condition.status.value)

    def _govern(namespace: str, view: Governance) -> None:
        """Label or unlabel the namespace; a failure is logged (the audit tries every period)."""
        try:
            changed = govern_namespace(kube=kube, namespace=namespace, governance=view)
        except errors.KubeError as err:
            log.warning("could not update the residency parameters and %s label of namespace %s: %s",
                        GOVERNED_LABEL, namespace, err)
            return
        if changed:
            log.info("namespace %s: %s", namespace, "residency parameters and labels updated"
                     if view.stacks.get(namespace) else f"no longer {GOVERNED_LABEL}")
