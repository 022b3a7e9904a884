"""The residency audit of one stack: where everything actually is, recorded on the stack.

Every audit period (``handlers.residency``'s timer) for each stack:

1. Find what breaks the rules (``find_violations``): every pod of the namespace by the region
   of the node it runs on (or, pending, by its constraints), every PersistentVolumeClaim by its
   bound volume's topology (or its StorageClass), every Service by its exposure, the stack's own
   pools and volumes, and every S3 store by its bucket's real location and settings
   (``services.residency_stores``, never creating anything). Objects labelled for another stack
   of the namespace answer to that stack (``policy.residency.scope_for``).
2. Turn findings into ``status.violations`` (oldest first; a violation keeps the time it was
   first seen), ``status.violationCount`` and the ``ResidencyCompliant`` condition (False with
   the first violation's rule as reason), and set ``sovereign_residency_violations{stack,kind}``.
3. Only when that differs from what the stack's status holds: server-side apply exactly those
   three fields of the status as field manager ``sovereign-residency-audit`` (the reconciler
   applies the rest of the status as ``sovereign-operator``; conditions are a list-map keyed by
   type, so each manager owns its own conditions), a Warning Event per new violation and a
   Normal Event naming the ones cleared. Unchanged findings write nothing.

Called by ``handlers.residency``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from sovereign.api import (
    API_VERSION,
    KIND,
    Condition,
    ConditionStatus,
    ConditionType,
    InvalidStackError,
    ResidencyViolation,
    SovereignStack,
    parse_stack,
)
from sovereign.kube import errors
from sovereign.kube.admission import PERSISTENT_VOLUME, apply_stack_status
from sovereign.kube.client import Kube
from sovereign.kube.resources import PERSISTENT_VOLUME_CLAIM, POD, SERVICE
from sovereign.metrics import RESIDENCY_VIOLATIONS
from sovereign.policy import residency as policy
from sovereign.policy.residency_store import Decision
from sovereign.services.residency_stores import verify_data_stores

log = logging.getLogger(__name__)

Manifest = Mapping[str, Any]

FIELD_MANAGER = "sovereign-residency-audit"
#: Kinds of objects the audit judges; each has a series of the violations metric, 0 when clean.
AUDITED_KINDS = ("Pod", "PersistentVolumeClaim", "Service", "SovereignStack", "DataStore")
VIOLATIONS_CLEARED = "ViolationsCleared"


@dataclass(frozen=True)
class Finding:
    """An object that breaks a residency rule, and the decision that says how."""

    kind: str
    namespace: str
    name: str
    decision: Decision

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kind, self.namespace, self.name, self.decision.reason)


@dataclass(frozen=True)
class AuditResult:
    """What one audit found and whether it wrote the status."""

    violations: tuple[ResidencyViolation, ...]
    condition: Condition
    written: bool


def audit_stack(*, kube: Kube, body: Manifest, governance: policy.Governance,
                now: datetime | None = None) -> AuditResult | None:
    """Audit the stack ``body``; None when there is nothing to audit (being deleted, invalid)."""
    if body["metadata"].get("deletionTimestamp"):
        return None
    try:
        stack = parse_stack({key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body})
    except InvalidStackError:
        return None  # the reconciler reports an invalid spec on Ready
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    findings = find_violations(kube=kube, stack=stack, body=body, governance=governance)
    previous_violations, previous_condition = stored_residency(body)
    violations = violations_from(findings, previous=previous_violations, now=now)
    condition = residency_condition(violations, previous=previous_condition,
                                    generation=stack.metadata.generation, scope=policy.stack_scope(stack), now=now)
    _count(stack, violations)
    unchanged = (_dump_all(violations) == _dump_all(previous_violations)
                 and previous_condition is not None and _dump(condition) == _dump(previous_condition))
    if unchanged:
        return AuditResult(tuple(violations), condition, written=False)
    meta = body["metadata"]
    try:
        apply_stack_status(kube, {
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": {"conditions": [_dump(condition)], "violations": _dump_all(violations),
                       "violationCount": len(violations)},
        }, field_manager=FIELD_MANAGER)
    except errors.NotFound:
        return None  # deleted meanwhile
    _announce(kube, body, before=previous_violations, after=violations)
    return AuditResult(tuple(violations), condition, written=True)


@dataclass(frozen=True)
class Judgement:
    """One object of the namespace that a stack governs, and what its rule says about it."""

    kind: str
    obj: Manifest
    decision: Decision


def judge_namespace(*, kube: Kube, stack: SovereignStack, governance: policy.Governance) -> list[Judgement]:
    """Every pod (not terminating), volume claim and Service of the stack's namespace that the
    stack governs, judged: pods by where they run, claims by their volume or class, Services by
    their exposure. In that order, each kind by name."""
    namespace = stack.metadata.namespace or ""
    topology = governance.topology
    judgements: list[Judgement] = []
    for pod in _by_name(kube.list(POD, namespace=namespace)):
        if (scope := governed_by(pod, governance=governance, stack=stack)) and not pod["metadata"].get(
                "deletionTimestamp"):
            judgements.append(Judgement("Pod", pod, policy.check_pod_placement(pod=pod, scope=scope,
                                                                                topology=topology)))
    for claim in _by_name(kube.list(PERSISTENT_VOLUME_CLAIM, namespace=namespace)):
        if scope := governed_by(claim, governance=governance, stack=stack):
            spec = claim.get("spec") or {}
            volume = kube.get(PERSISTENT_VOLUME, name=spec["volumeName"]) if spec.get("volumeName") else None
            judgements.append(Judgement("PersistentVolumeClaim", claim, policy.check_claim(
                claim=claim, scope=scope, topology=topology, volume=volume,
                storage_class=governance.storage_class(spec.get("storageClassName")))))
    for service in _by_name(kube.list(SERVICE, namespace=namespace)):
        if scope := governed_by(service, governance=governance, stack=stack):
            judgements.append(Judgement("Service", service, policy.check_service(service=service, scope=scope)))
    return judgements


def find_violations(*, kube: Kube, stack: SovereignStack, body: Manifest,
                    governance: policy.Governance) -> list[Finding]:
    """Everything in the stack's namespace, and the stack itself, that breaks its rules now."""
    namespace = stack.metadata.namespace or ""
    findings = [Finding(j.kind, namespace, j.obj["metadata"]["name"], j.decision)
                for j in judge_namespace(kube=kube, stack=stack, governance=governance) if not j.decision.ok]
    decision = policy.check_stack(stack=stack, body=body, storage_classes=governance.storage_classes,
                                  topology=governance.topology)
    if not decision.ok:
        findings.append(Finding("SovereignStack", namespace, body["metadata"]["name"], decision))
    own = policy.stack_scope(stack)
    for verdict in verify_data_stores(kube=kube, stack=stack, create=False):
        if not verdict.ok:
            entry = {"metadata": {"name": verdict.name, "namespace": namespace}}
            detail = f"s3://{verdict.bucket}: {verdict.decision.message}"
            findings.append(Finding("DataStore", namespace, verdict.name, policy.failure(
                kind="DataStore", obj=entry, rule=verdict.decision.reason, detail=detail, scope=own)))
    return findings


def governed_by(obj: Manifest, *, governance: policy.Governance, stack: SovereignStack) -> policy.Scope | None:
    """The rules ``obj`` (in the stack's namespace) answers to, if ``stack`` sets them; None when
    it answers to another stack of the namespace alone (that stack's audit judges it)."""
    scope = governance.scope(namespace=stack.metadata.namespace or "",
                             labels=(obj.get("metadata") or {}).get("labels"))
    return scope if scope is not None and stack.metadata.name in scope.stacks else None


def _by_name(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objects, key=lambda obj: obj["metadata"]["name"])


def violations_from(findings: Sequence[Finding], *, previous: Sequence[ResidencyViolation],
                    now: datetime) -> list[ResidencyViolation]:
    """``status.violations`` for ``findings``: oldest first, each keeping when it was first seen."""
    first_seen = {(v.kind, v.namespace, v.name, v.rule): v.since for v in previous}
    violations = [
        ResidencyViolation(kind=f.kind, namespace=f.namespace, name=f.name, rule=f.decision.reason,
                           message=f.decision.message, since=first_seen.get(f.key, now))
        for f in findings
    ]
    return sorted(violations, key=lambda v: (v.since, v.kind, v.namespace, v.name, v.rule))


def residency_condition(violations: Sequence[ResidencyViolation], *, previous: Condition | None,
                        generation: int | None, scope: policy.Scope, now: datetime) -> Condition:
    """``ResidencyCompliant``: False with the first violation's rule as reason while any exist."""
    if violations:
        listed = "; ".join(v.message for v in violations)
        status, reason = ConditionStatus.FALSE, violations[0].rule
        message = f"{len(violations)} residency violation(s): {listed}"
    else:
        status, reason = ConditionStatus.TRUE, policy.IN_REGIONS
        message = (f"every pod, volume, Service and store audited for {scope.governor} is inside "
                   f"{scope.allowed}")
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    return Condition(type=ConditionType.RESIDENCY_COMPLIANT.value, status=status, observed_generation=generation,
                     last_transition_time=since, reason=reason, message=message)


def stored_residency(body: Manifest) -> tuple[list[ResidencyViolation], Condition | None]:
    """The violations and ``ResidencyCompliant`` condition the stack's status holds now.

    Read leniently, entry by entry: what does not parse was not written by this audit and is
    replaced on the next write.
    """
    status = body.get("status") or {}
    violations = []
    for entry in status.get("violations") or []:
        try:
            violations.append(ResidencyViolation.model_validate(entry))
        except ValidationError:
            continue
    condition = None
    for entry in status.get("conditions") or []:
        if entry.get("type") == ConditionType.RESIDENCY_COMPLIANT.value:
            try:
                condition = Condition.model_validate(entry)
            except ValidationError:
                condition = None
    return violations, condition


def _count(stack: SovereignStack, violations: Sequence[ResidencyViolation]) -> None:
    counts = Counter(v.kind for v in violations)
    for kind in sorted({*AUDITED_KINDS, *counts}):
        RESIDENCY_VIOLATIONS.labels(stack=stack.metadata.name, namespace=stack.metadata.namespace,
                                    kind=kind).set(counts.get(kind, 0))


def _announce(kube: Kube, body: Manifest, *, before: Sequence[ResidencyViolation],
              after: Sequence[ResidencyViolation]) -> None:
    """A Warning Event per new violation; one Normal Event for those that cleared."""
    regarding = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
    old = {(v.kind, v.namespace, v.name, v.rule) for v in before}
    new = {(v.kind, v.namespace, v.name, v.rule) for v in after}
    events = [("Warning", v.rule, v.message) for v in after if (v.kind, v.namespace, v.name, v.rule) not in old]
    cleared = [v for v in before if (v.kind, v.namespace, v.name, v.rule) not in new]
    if cleared:
        listed = ", ".join(f"{v.kind} {v.namespace}/{v.name} ({v.rule})" for v in cleared)
        events.append(("Normal", VIOLATIONS_CLEARED, f"no longer breaking residency rules: {listed}"))
    for kind, reason, message in events:
        try:
            kube.record_event(regarding=regarding, type=kind, reason=reason, message=message)
        except (errors.Forbidden, errors.Invalid) as err:
            # The violation is in the status and the metric; a missing Event is worth a log line.
            log.warning("stack %s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], err)


def _dump(condition: Condition) -> dict[str, Any]:
    return condition.model_dump(mode="json", exclude_none=True, by_alias=True)


def _dump_all(violations: Sequence[ResidencyViolation]) -> list[dict[str, Any]]:
    return [v.model_dump(mode="json", exclude_none=True, by_alias=True) for v in violations]
