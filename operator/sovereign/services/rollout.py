"""The blue/green rollouts of a stack's models with evaluation, as the reconciler sees them.

Before rendering, ``observe_rollouts`` reads, for each model with ``evaluation``, what the
rollout's decision depends on (``policy.rollout.Observed``): the revision its logical Service
selects, its revision Deployments (ready, stuck), its evaluation Jobs with the report each left
in its pod's termination message, a Deployment from before evaluation was set, a canary the
Service records (and then the candidate's pods' last restart) or one it records as aborted, and
the history stored in status; then ``policy.rollout.decide`` says what this pass renders.
``kept_by_rollouts`` names the live objects the pass leaves exactly as they are (the serving
revision's Deployment while a candidate is tried or while the previous one drains).
After the status is written, ``record_rollouts`` turns a rollout that switched or failed into an
Event on the stack and the ``sovereign_model_evaluations_total`` metric.

Called by ``services.reconcile``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sovereign import metrics
from sovereign.api import API_VERSION, KIND, SovereignStack, SovereignStackStatus
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.resources import POD
from sovereign.policy.rollout import (
    AbortMark,
    CanaryMark,
    Evaluation,
    Observed,
    Revision,
    RolloutDecision,
    RolloutState,
    decide,
)
from sovereign.render import names
from sovereign.render.names import Component, ObjectKey

log = logging.getLogger(__name__)

Manifest = Mapping[str, Any]


def observe_rollouts(*, kube: Kube, stack: SovereignStack, children: Mapping[ObjectKey, Manifest],
                     previous: SovereignStackStatus | None, now: datetime) -> dict[str, RolloutDecision]:
    """The rollout decision of each model with evaluation, by model name."""
    models = [model for model in stack.spec.models if model.evaluation is not None]
    if not models:
        return {}
    namespace = names.stack_namespace(stack)
    jobs = [obj for key, obj in children.items() if key.kind == "Job" and _component(obj) == Component.EVALUATION]
    pods: list[Manifest] = []
    if jobs:
        selector = f"{names.STACK_LABEL}={names.stack_name(stack)},{names.COMPONENT_LABEL}={Component.EVALUATION.value}"
        pods = kube.list(POD, namespace=namespace, selector=selector)
    stored = {entry.name: entry for entry in (previous.models if previous else [])}
    decisions: dict[str, RolloutDecision] = {}
    for model in models:
        service = children.get(ObjectKey("", "Service", namespace, model.name))
        serving = names.selected_revision(service)
        canary, aborted = _canary_marks(service)
        legacy = children.get(ObjectKey("apps", "Deployment", namespace, model.name))
        revisions = {
            _labels(obj)[names.REVISION_LABEL]: _revision(obj)
            for key, obj in children.items()
            if key.kind == "Deployment" and _labels(obj).get(names.NAME_LABEL) == model.name
            and names.REVISION_LABEL in _labels(obj)
        }
        evaluations = {
            _labels(job)[names.REVISION_LABEL]: _evaluation(job, pods)
            for job in jobs if _labels(job).get(names.NAME_LABEL) == model.name and names.REVISION_LABEL in _labels(job)
        }
        if canary is not None and canary.revision in revisions:
            # Only a canary's pods are read: a restart during it ends it.
            selector = (f"{names.STACK_LABEL}={names.stack_name(stack)},{names.NAME_LABEL}={model.name},"
                        f"{names.REVISION_LABEL}={canary.revision}")
            revisions[canary.revision] = replace(
                revisions[canary.revision],
                last_restart=_last_restart(kube.list(POD, namespace=namespace, selector=selector)))
        observed = Observed(
            serving=serving,
            revisions=revisions, evaluations=evaluations,
            history=tuple(stored[model.name].history) if model.name in stored else (),
            # The pre-evaluation Deployment matters while the Service still selects it (no revision).
            legacy_model=(_annotations(legacy).get(names.MODEL_ID_ANNOTATION, "")
                          if legacy is not None and service is not None and serving is None else None),
            canary=canary, aborted=aborted,
        )
        decisions[model.name] = decide(model=model, observed=observed, now=now)
    return decisions


def kept_by_rollouts(*, stack: SovereignStack, decisions: Mapping[str, RolloutDecision]) -> list[ObjectKey]:
    """Live objects a pass leaves as they are: revisions kept serving or draining, and a model's
    pre-evaluation Deployment and Service while it is adopted."""
    namespace = names.stack_namespace(stack)
    kept: list[ObjectKey] = []
    for model, decision in decisions.items():
        kept += [ObjectKey("apps", "Deployment", namespace, names.revision_name(model=model, revision=revision))
                 for revision in decision.kept]
        if decision.keep_legacy:
            kept.append(ObjectKey("apps", "Deployment", namespace, model))
            if decision.serving is None:
                kept.append(ObjectKey("", "Service", namespace, model))
    return kept


def record_rollouts(*, kube: Kube, body: Mapping[str, Any], previous: SovereignStackStatus | None,
                    decisions: Mapping[str, RolloutDecision]) -> None:
    """An Event and a metric for each rollout that switched or failed in this pass (compared
    with the stored status, so a pass that changes nothing records nothing)."""
    meta = body["metadata"]
    before = {entry.name: entry.rollout.state if entry.rollout else "" for entry in (previous.models if previous else [])}
    for model, decision in decisions.items():
        if decision.state not in (RolloutState.SWITCHING, RolloutState.FAILED) or before.get(model) == decision.state:
            continue
        result = "passed" if decision.state is RolloutState.SWITCHING else "failed"
        metrics.MODEL_EVALUATIONS.labels(namespace=meta["namespace"], stack=meta["name"], model=model,
                                         result=result).inc()
        if decision.evidence is not None:
            metrics.MODEL_EVALUATION_SCORE.labels(namespace=meta["namespace"], stack=meta["name"],
                                                  model=model).set(decision.evidence.score)
        try:
            kube.record_event(regarding={"apiVersion": API_VERSION, "kind": KIND, "metadata": meta},
                              type="Normal" if result == "passed" else "Warning", reason=decision.reason,
                              message=f"model {model}: {decision.message}"[:1024])
        except (errors.Forbidden, errors.Invalid) as err:
            log.warning("stack %s/%s: %s", meta["namespace"], meta["name"], err)


def _revision(deployment: Manifest) -> Revision:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    ready = (current and wanted > 0 and status.get("readyReplicas", 0) >= wanted
             and status.get("updatedReplicas", 0) >= wanted)
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
    return Revision(model=_annotations(deployment).get(names.MODEL_ID_ANNOTATION, ""), ready=ready,
                    stuck=progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded",
                    replicas=wanted, ready_replicas=status.get("readyReplicas", 0))


def _canary_marks(service: Manifest | None) -> tuple[CanaryMark | None, AbortMark | None]:
    """The canary the logical Service records as running, and the one it records as aborted."""
    notes = _annotations(service)
    canary = None
    revision, since = notes.get(names.CANARY_REVISION_ANNOTATION), _time(notes.get(names.CANARY_SINCE_ANNOTATION))
    if revision and since is not None:
        canary = CanaryMark(revision=revision, since=since)
    revision, _, why = (notes.get(names.CANARY_ABORTED_ANNOTATION) or "").partition(": ")
    return canary, AbortMark(revision=revision, message=why) if revision and why else None


def _last_restart(pods: list[Manifest]) -> datetime | None:
    """When a container of ``pods`` last ended and was started again (its lastState), or None."""
    ends = [_time(((container.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
            for pod in pods for container in (pod.get("status") or {}).get("containerStatuses") or []]
    return max((end for end in ends if end is not None), default=None)


def _time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _evaluation(job: Manifest, pods: list[Manifest]) -> Evaluation:
    """A Job as ``policy.rollout`` reads it: finished or not, its pod's report, or why it failed."""
    name = job["metadata"]["name"]
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    mine = sorted((p for p in pods if _labels(p).get("job-name") == name),
                  key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if "Complete" not in conditions and failed is None:
        return Evaluation(job=name, waiting=_unscheduled(mine[-1]) if mine else "")
    report: dict[str, Any] = {}
    for pod in reversed(mine):
        report = _termination_report(pod)
        if report:
            break
    why = (failed.get("message") or failed.get("reason") or "failed") if failed else ""
    return Evaluation(job=name, finished=True, report=report, failure=why)


def _unscheduled(pod: Manifest) -> str:
    """Why the scheduler has not placed ``pod`` (its PodScheduled condition), or nothing."""
    scheduled = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    if scheduled.get("status") != "False":
        return ""
    return str(scheduled.get("message") or scheduled.get("reason") or "not scheduled")[:300]


def _termination_report(pod: Manifest) -> dict[str, Any]:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        try:
            report = json.loads(terminated.get("message") or "")
        except ValueError:
            message = (terminated.get("message") or "").strip().splitlines()
            return {"error": message[-1][:500]} if message else {}
        return report if isinstance(report, dict) else {}
    return {}


def _labels(obj: Manifest) -> Mapping[str, str]:
    return obj["metadata"].get("labels") or {}


def _annotations(obj: Manifest | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def _component(obj: Manifest) -> str | None:
    return _labels(obj).get(names.COMPONENT_LABEL)
