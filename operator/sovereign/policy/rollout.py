"""Blue/green rollouts of a model with ``evaluation``: where one stands, decided from what is observed.

A model's *revision* is a digest of what serves (model id, engine, image, source). The logical
name's Service selects one revision: the one *serving*. When the spec's revision (*desired*)
differs, the candidate runs in a Deployment of its own beside the serving one, an evaluation Job
scores it through its own Service, and the Service switches to it only when it passed (or when
``evaluation.readmit`` lists its model and the history shows it passed before). On a fail the
serving revision stays, and so does the failed Job, as evidence, until the spec changes.

``decide`` is a function of the spec and the observed objects only (the Service's selector, the
revision Deployments, the evaluation Jobs' reports, the stored history), never of memory, so an
operator restarted at any point resumes where the cluster is: a switch already applied is seen
as Serving (never switched twice), a Job already finished is read, not re-run, and anything of a
revision no longer wanted is left out of the plan and so pruned (nothing orphaned). Before a
switch is recorded in the history, the Job holding its evidence is kept; after it, the previous
revision's Deployment is kept for ``DRAIN_SECONDS`` so requests in flight on it finish.

With ``evaluation.canary``, a candidate that passed first runs as a *canary*: scaled to
ceil(weight% of the serving replicas), at least 1, while the logical Service selects both
revisions (a plain Service spreads by endpoint, so the share is one of endpoints). The Service
itself carries the canary's revision and start (``Observed.canary``), so the count survives a
restart and the selection and its time change in one write. A candidate pod that turns unready or
restarts during it aborts to Failed; the Service, back on the serving revision, then keeps the
abort (``Observed.aborted``) until the spec changes, so the candidate is not tried again. After
``durationSeconds`` the candidate scales up to the spec's replicas, still beside the serving one,
and the switch follows once all are ready.

Pure; called by the reconcile service (which renders what ``RolloutDecision`` names) and tested
transition by transition in tests/unit/policy/test_rollout.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sovereign.api import EvaluationEvidence, ModelSpec, ServingRecord, WorstExample

#: How long the previous revision's replicas stay after the switch: long enough for the Service's
#: endpoints to move on every node and for the answers in flight on them to finish.
DRAIN_SECONDS = 60
#: The lineage kept in status (oldest dropped first).
HISTORY_KEPT = 32
#: How much of each worst example's text a condition's message quotes.
MESSAGE_CHARS = 60


class RolloutState(StrEnum):
    SERVING = "Serving"
    CANDIDATE_STARTING = "CandidateStarting"
    EVALUATING = "Evaluating"
    CANARY = "Canary"
    SWITCHING = "Switching"
    FAILED = "Failed"


class Admission(StrEnum):
    """How a revision came to serve (``ServingRecord.admission``)."""

    EVALUATED = "Evaluated"
    READMITTED = "Readmitted"
    INITIAL = "Initial"


# Reasons, CamelCase, as conditions carry them.
CANDIDATE_STARTING = "CandidateStarting"
CANDIDATE_NOT_STARTING = "CandidateNotStarting"
EVALUATING = "Evaluating"
EVALUATION_FAILED = "EvaluationFailed"
EVALUATION_PASSED = "EvaluationPassed"
READMITTED = "Readmitted"
SERVING = "Serving"
ADOPTED = "Adopted"
EVALUATION_ADDED_WITH_NEW_MODEL = "EvaluationAddedWithNewModel"
CANARY = "Canary"
CANARY_PASSED = "CanaryPassed"
CANARY_ABORTED = "CanaryAborted"


def revision(model: ModelSpec) -> str:
    """The digest of what serves a model: a change of it is a new candidate; replicas,
    resources, arguments and the evaluation itself roll within a revision."""
    served = {"model": model.model, "engine": model.engine.value, "image": model.image,
              "source": model.source.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Revision:
    """A revision's Deployment as observed."""

    model: str
    #: Every replica it wants is ready.
    ready: bool = False
    #: Kubernetes gave up on it (Progressing=False, ProgressDeadlineExceeded).
    stuck: bool = False
    #: Replicas its spec asks for, and those ready (a canary is judged on these: ``ready`` is
    #: False for a moment after each change of replicas, until the Deployment controller saw it).
    replicas: int = 0
    ready_replicas: int = 0
    #: When a container of its pods last ended and was restarted (None: never).
    last_restart: datetime | None = None


@dataclass(frozen=True)
class Evaluation:
    """A revision's evaluation Job as observed: running (``finished`` False), or finished with
    the report ``sovereign evaluate`` wrote to its termination message."""

    job: str
    finished: bool = False
    report: Mapping[str, object] = field(default_factory=dict)
    #: Why it ended without a report (the Job's own condition message, such as its deadline).
    failure: str = ""
    #: While it runs: what holds its pod back, when something does (such as no node with room).
    waiting: str = ""

    @property
    def passed(self) -> bool:
        return self.finished and self.report.get("passed") is True


@dataclass(frozen=True)
class CanaryMark:
    """A canary as the logical Service records it: the candidate revision it also selects, since when."""

    revision: str
    since: datetime


@dataclass(frozen=True)
class AbortMark:
    """A canary the logical Service records as aborted: the revision, and why."""

    revision: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw of one model with evaluation."""

    #: The revision the logical Service selects; None when there is no Service, or it selects none.
    serving: str | None
    revisions: Mapping[str, Revision] = field(default_factory=dict)
    evaluations: Mapping[str, Evaluation] = field(default_factory=dict)
    history: Sequence[ServingRecord] = ()
    #: The model's Deployment from before evaluation was set (named after the model, no revision):
    #: the model id it serves, or None when there is none.
    legacy_model: str | None = None
    #: The canary the Service runs (it selects ``serving`` and this revision), or None.
    canary: CanaryMark | None = None
    #: A canary the Service records as aborted, or None.
    aborted: AbortMark | None = None


@dataclass(frozen=True)
class RolloutDecision:
    """What this pass renders for the model, and what its status says."""

    state: RolloutState
    reason: str
    message: str
    desired: str
    #: The revision the logical Service selects after this pass (None: it selects no pod yet).
    serving: str | None
    #: Revisions whose Deployment (and own Service) is rendered from the spec: the desired one, or none.
    rendered: tuple[str, ...]
    #: Revisions whose live Deployment stays exactly as it is (the serving one while it is not the
    #: desired one, the previous one while it drains).
    kept: tuple[str, ...]
    #: Revisions whose evaluation Job is rendered (a running one, or one kept as evidence).
    evaluations: tuple[str, ...]
    #: Keep the model's pre-evaluation Deployment (and the Service selecting it) as they are.
    keep_legacy: bool
    history: tuple[ServingRecord, ...]
    evidence: EvaluationEvidence | None = None
    #: The canary the logical Service runs after this pass (it selects ``serving`` and the desired revision).
    canary: CanaryMark | None = None
    #: The canary abort the logical Service keeps recording after this pass.
    aborted: AbortMark | None = None
    #: Replicas of the desired revision's Deployment when not the spec's (a canary's share).
    replicas: int | None = None

    @property
    def reconciling(self) -> bool:
        return self.state in (RolloutState.CANDIDATE_STARTING, RolloutState.EVALUATING, RolloutState.CANARY,
                              RolloutState.SWITCHING)

    @property
    def stalled(self) -> bool:
        return self.state is RolloutState.FAILED


def decide(*, model: ModelSpec, observed: Observed, now: datetime) -> RolloutDecision:
    """The rollout's next step for ``model`` (which has ``evaluation``), from ``observed``."""
    assert model.evaluation is not None, "only models with evaluation roll out blue/green"
    desired = revision(model)
    history = tuple(observed.history)
    serving = observed.serving
    if serving is None and observed.legacy_model is not None:
        return _adopt(model=model, observed=observed, desired=desired, history=history, now=now)
    if serving == desired:
        return _serving(model=model, observed=observed, desired=desired, history=history, now=now)
    kept = (serving,) if serving is not None and serving in observed.revisions else ()
    candidate = observed.revisions.get(desired)
    earlier = _earlier_pass(model=model, history=history)
    step = _Step(desired=desired, serving=serving, kept=kept, history=history, model=model.model)
    job = observed.evaluations.get(desired)
    if observed.aborted is not None and observed.aborted.revision == desired:
        # Its replicas are gone and its Job passed: only the Service remembers the abort.
        return step.failed(CANARY_ABORTED, observed.aborted.message, aborted=observed.aborted,
                           evidence=evidence_of(job, model=model.model) if job is not None else None,
                           evaluations=_evaluation_of(observed, desired))
    if (observed.canary is not None and observed.canary.revision == desired and serving is not None
            and model.evaluation.canary is not None):
        return _canary(model=model, observed=observed, step=step, since=observed.canary.since, now=now)
    if job is not None and job.finished and not job.passed and earlier is None:
        # Read before the candidate's readiness: its replicas are gone after a fail, and starting
        # them again would only fail the same way (unless readmit now names a model that passed before).
        evidence = evidence_of(job, model=model.model)
        return step.failed(EVALUATION_FAILED, _failure_message(model=model, job=job, evidence=evidence,
                                                               current=_current(observed, serving)),
                           evidence=evidence, evaluations=(desired,))
    if candidate is None or not candidate.ready:
        if candidate is not None and candidate.stuck:
            return step.failed(CANDIDATE_NOT_STARTING,
                               f"candidate {model.model} did not start: its Deployment passed its progress "
                               "deadline; the current model keeps serving. Fix the spec, or set model back")
        return step.decision(RolloutState.CANDIDATE_STARTING, CANDIDATE_STARTING,
                             f"candidate {model.model} starting beside {_current(observed, serving)}",
                             evaluations=_evaluation_of(observed, desired))
    if earlier is not None:
        return step.switch(Admission.READMITTED, earlier, now=now,
                           message=f"{model.model} re-admitted (evaluation.readmit) on its pass of "
                                   f"{_when(earlier)}: score {earlier.score:g} >= {earlier.threshold:g}")
    if job is None or not job.finished:
        held = f" (its Job's pod waits: {job.waiting})" if job is not None and job.waiting else ""
        return step.decision(RolloutState.EVALUATING, EVALUATING,
                             f"evaluating candidate {model.model} on {model.evaluation.dataset.path}{held}; "
                             f"{_current(observed, serving)} keeps serving", evaluations=(desired,))
    if model.evaluation.canary is not None and serving is not None:
        return _canary(model=model, observed=observed, step=step, since=now, now=now)
    evidence = evidence_of(job, model=model.model)
    return step.switch(Admission.EVALUATED, evidence, now=now, evaluations=(desired,),
                       message=f"{model.model} passed: score {evidence.score:g} >= {evidence.threshold:g} "
                               f"on {evidence.examples} examples of {evidence.dataset}")


def evidence_of(job: Evaluation, *, model: str) -> EvaluationEvidence:
    """A finished Job's report as status evidence (what ``policy.evaluation`` wrote)."""
    report = job.report
    worst = [WorstExample.model_validate(item) for item in report.get("worstExamples") or []
             if isinstance(item, Mapping)]
    return EvaluationEvidence.model_validate({
        "model": report.get("model") or model, "dataset": report.get("dataset", ""),
        "version": report.get("version", ""), "examples": report.get("examples", 0),
        "score": report.get("score", 0), "threshold": report.get("threshold", 0),
        "passed": report.get("passed") is True, "finishedAt": report.get("finishedAt"),
        "job": job.job, "worstExamples": worst,
    })


@dataclass(frozen=True)
class _Step:
    desired: str
    serving: str | None
    kept: tuple[str, ...]
    history: tuple[ServingRecord, ...]
    model: str

    def decision(self, state: RolloutState, reason: str, message: str, *, evaluations: tuple[str, ...] = (),
                 rendered: bool = True, evidence: EvaluationEvidence | None = None, canary: CanaryMark | None = None,
                 aborted: AbortMark | None = None, replicas: int | None = None) -> RolloutDecision:
        return RolloutDecision(state=state, reason=reason, message=message, desired=self.desired,
                               serving=self.serving, rendered=(self.desired,) if rendered else (), kept=self.kept,
                               evaluations=evaluations, keep_legacy=False, history=self.history, evidence=evidence,
                               canary=canary, aborted=aborted, replicas=replicas)

    def failed(self, reason: str, message: str, *, evidence: EvaluationEvidence | None = None,
               evaluations: tuple[str, ...] = (), aborted: AbortMark | None = None) -> RolloutDecision:
        # The candidate's replicas go (they hold a pool's capacity for nothing); its Job stays as evidence.
        return self.decision(RolloutState.FAILED, reason, message, evaluations=evaluations, rendered=False,
                             evidence=evidence, aborted=aborted)

    def switch(self, admission: Admission, evidence: EvaluationEvidence, *, now: datetime, message: str,
               evaluations: tuple[str, ...] = (), reason: str | None = None) -> RolloutDecision:
        history = _switched(self.history, model=self.model, revision=self.desired, admission=admission,
                            evidence=evidence, now=now)
        return RolloutDecision(state=RolloutState.SWITCHING,
                               reason=reason or (READMITTED if admission is Admission.READMITTED else EVALUATION_PASSED),
                               message=message, desired=self.desired, serving=self.desired, rendered=(self.desired,),
                               kept=self.kept, evaluations=evaluations, keep_legacy=False, history=history,
                               evidence=evidence)


def canary_replicas(*, weight: int, serving: int) -> int:
    """The candidate's replicas in a canary: ceil(weight% of the serving replicas), at least 1."""
    return max(1, -(-weight * serving // 100))


def _canary(*, model: ModelSpec, observed: Observed, step: _Step, since: datetime, now: datetime) -> RolloutDecision:
    """A passed candidate beside the serving revision, both selected by the logical Service, from
    ``since`` (now, when this pass starts it) for ``canary.durationSeconds``; then scaled up to the
    spec's replicas, and switched to once they are all ready. An unready or restarted candidate pod
    ends it in Failed, the Service back on the serving revision alone."""
    assert model.evaluation is not None and model.evaluation.canary is not None and step.serving is not None
    canary = model.evaluation.canary
    serving = observed.revisions.get(step.serving)
    share = canary_replicas(weight=canary.weight, serving=serving.replicas if serving and serving.replicas else
                            model.replicas)
    candidate = observed.revisions.get(step.desired) or Revision(model=model.model)
    job = observed.evaluations.get(step.desired)
    evidence = evidence_of(job, model=model.model) if job is not None else None
    current = _current(observed, step.serving)
    why = ""
    if candidate.last_restart is not None and candidate.last_restart >= since:
        why = f"a container of its pods restarted at {_stamp(candidate.last_restart)}"
    elif candidate.ready_replicas < share:
        why = f"{candidate.ready_replicas} of its {share} canary replica(s) ready"
    if why:
        aborted = AbortMark(step.desired, f"candidate {model.model} aborted during its canary: {why}; "
                                          f"{current} keeps serving alone. Fix the model, or set model back")
        return step.failed(CANARY_ABORTED, aborted.message, evidence=evidence, aborted=aborted,
                           evaluations=(step.desired,))
    mark = CanaryMark(step.desired, since)
    if now < since + timedelta(seconds=canary.duration_seconds):
        return step.decision(RolloutState.CANARY, CANARY,
                             f"canary: {model.model} on {share} replica(s) beside {current}, both behind "
                             f"{model.name}, until {_stamp(since + timedelta(seconds=canary.duration_seconds))}",
                             evaluations=(step.desired,),
                             evidence=evidence, canary=mark, replicas=share)
    if candidate.replicas >= model.replicas and candidate.ready and evidence is not None:
        return step.switch(Admission.EVALUATED, evidence, now=now, evaluations=(step.desired,),
                           message=f"{model.model} passed its evaluation (score {evidence.score:g} >= "
                                   f"{evidence.threshold:g}) and its canary of {canary.duration_seconds}s",
                           reason=CANARY_PASSED)
    return step.decision(RolloutState.CANARY, CANARY,
                         f"canary of {model.model} over: scaling it to {model.replicas} replica(s) before the switch; "
                         f"both still behind {model.name}", evaluations=(step.desired,), evidence=evidence, canary=mark)


def _serving(*, model: ModelSpec, observed: Observed, desired: str, history: tuple[ServingRecord, ...],
             now: datetime) -> RolloutDecision:
    """The Service selects the desired revision: record it if the switch is not recorded yet (the
    pass that switched may have ended before its status was written), drain the previous one."""
    recorded = bool(history) and history[-1].revision == desired and history[-1].until is None
    evaluations: tuple[str, ...] = ()
    if not recorded:
        job = observed.evaluations.get(desired)
        evidence = evidence_of(job, model=model.model) if job is not None and job.passed else None
        earlier = _earlier_pass(model=model, history=history)
        admission = (Admission.EVALUATED if evidence else Admission.READMITTED if earlier else Admission.INITIAL)
        history = _switched(history, model=model.model, revision=desired, admission=admission,
                            evidence=evidence or earlier, now=now)
        evaluations = (desired,) if job is not None else ()
    since = history[-1].since
    kept = tuple(sorted(r for r in observed.revisions if r != desired and now - since < timedelta(seconds=DRAIN_SECONDS)))
    message = f"{model.model} serves {model.name}" + (f" (admitted: {history[-1].admission})" if history else "")
    return RolloutDecision(state=RolloutState.SERVING, reason=SERVING, message=message, desired=desired,
                           serving=desired, rendered=(desired,), kept=kept, evaluations=evaluations,
                           keep_legacy=False, history=history, evidence=history[-1].evaluation)


def _adopt(*, model: ModelSpec, observed: Observed, desired: str, history: tuple[ServingRecord, ...],
           now: datetime) -> RolloutDecision:
    """Evaluation was set on a model already serving from its pre-evaluation Deployment: the same
    model is adopted as Initial once its revision Deployment is ready (the old Service selects both
    meanwhile: the same model either way); a different model must wait for that first."""
    if observed.legacy_model != model.model:
        return RolloutDecision(
            state=RolloutState.FAILED, reason=EVALUATION_ADDED_WITH_NEW_MODEL,
            message=(f"evaluation was added in the same change as a new model ({observed.legacy_model} -> "
                     f"{model.model}); nothing evaluated can be switched from a model that is not yet under "
                     f"evaluation: set model back to {observed.legacy_model}, let it be adopted, then change it"),
            desired=desired, serving=None, rendered=(), kept=(), evaluations=(), keep_legacy=True, history=history)
    candidate = observed.revisions.get(desired)
    if candidate is None or not candidate.ready:
        return RolloutDecision(state=RolloutState.CANDIDATE_STARTING, reason=ADOPTED,
                               message=f"{model.model} moving to a revision Deployment before evaluation applies",
                               desired=desired, serving=None, rendered=(desired,), kept=(), evaluations=(),
                               keep_legacy=True, history=history)
    history = _switched(history, model=model.model, revision=desired, admission=Admission.INITIAL, evidence=None,
                        now=now)
    return RolloutDecision(state=RolloutState.SWITCHING, reason=ADOPTED,
                           message=f"{model.model} adopted as it served before evaluation was set",
                           desired=desired, serving=desired, rendered=(desired,), kept=(), evaluations=(),
                           keep_legacy=True, history=history)


def _earlier_pass(*, model: ModelSpec, history: Sequence[ServingRecord]) -> EvaluationEvidence | None:
    """The evaluation that admitted ``model.model`` before, when ``evaluation.readmit`` lists it."""
    assert model.evaluation is not None
    if model.model not in model.evaluation.readmit:
        return None
    passes = [r.evaluation for r in history if r.model == model.model and r.evaluation and r.evaluation.passed]
    return passes[-1] if passes else None


def _switched(history: Sequence[ServingRecord], *, model: str, revision: str, admission: Admission,
              evidence: EvaluationEvidence | None, now: datetime) -> tuple[ServingRecord, ...]:
    """The history with the serving record closed and the new one opened at ``now``."""
    closed = [r.model_copy(update={"until": now}) if r.until is None else r for r in history]
    record = ServingRecord(model=model, revision=revision, since=now, admission=admission.value, evaluation=evidence)
    return tuple([*closed, record][-HISTORY_KEPT:])


def _evaluation_of(observed: Observed, desired: str) -> tuple[str, ...]:
    """A Job already there for a candidate that is (again) starting stays: its result is still its."""
    return (desired,) if desired in observed.evaluations else ()


def _current(observed: Observed, serving: str | None) -> str:
    if serving is None:
        return "nothing (no model has passed yet)"
    revision_ = observed.revisions.get(serving)
    return revision_.model if revision_ else f"revision {serving}"


def _when(evidence: EvaluationEvidence) -> str:
    return _stamp(evidence.finished_at) if evidence.finished_at else "an earlier run"


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure_message(*, model: ModelSpec, job: Evaluation, evidence: EvaluationEvidence, current: str) -> str:
    if not job.report or "score" not in job.report:
        why = str(job.report.get("error") or job.failure or "its Job failed without a report")
        return f"candidate {model.model} could not be evaluated: {why}; {current} keeps serving"
    worst = "; ".join(f"{_clip(w.prompt)!r} -> {_clip(w.answer)!r} (expected {_clip(w.expected)!r})"
                      for w in evidence.worst_examples)
    return (f"candidate {model.model} failed its evaluation: score {evidence.score:g} < threshold "
            f"{evidence.threshold:g} on {evidence.examples} examples of {evidence.dataset} (version "
            f"{evidence.version}); {current} keeps serving" + (f". Worst: {worst}" if worst else ""))


def _clip(text: str) -> str:
    """A text short enough for a condition's message (status keeps the longer form)."""
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
