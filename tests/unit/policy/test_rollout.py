"""The blue/green rollout of a model with evaluation (policy.rollout), transition by transition,
including an operator restarted at each point: the decision comes from what is observed only."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sovereign.api import EvaluationEvidence, ModelSpec, ServingRecord
from sovereign.policy.rollout import (
    DRAIN_SECONDS,
    AbortMark,
    CanaryMark,
    Evaluation,
    Observed,
    Revision,
    RolloutState,
    canary_replicas,
    decide,
    evidence_of,
    revision,
)

NOW = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
EVALUATION = {"dataset": {"dataStore": "weights", "path": "evals/chat.jsonl"}, "scorers": [{"contains": {}}],
              "threshold": 0.8}


def _model(model: str, **evaluation: object) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "chat", "engine": "llama-cpp", "model": model, "nodePool": "cpu",
        "source": {"dataStore": "weights", "path": f"gguf/{model}.gguf"}, "resources": {"cpu": "1", "memory": "1Gi"},
        "evaluation": {**EVALUATION, **evaluation}})


A, B, C = _model("tiny-a"), _model("tiny-b"), _model("tiny-c")
RA, RB, RC = revision(A), revision(B), revision(C)


def _report(model: str, *, score: float, passed: bool) -> dict:
    return {"model": model, "dataset": "s3://weights/evals/chat.jsonl", "version": "etag-1", "examples": 10,
            "score": score, "threshold": 0.8, "passed": passed, "finishedAt": "2026-11-30T17:59:00Z",
            "worstExamples": [{"line": 3, "prompt": "Capital of Qatar?", "expected": "Doha", "answer": "Paris",
                               "score": 0.0}]}


def _serving_a(since: datetime = NOW - timedelta(hours=1)) -> list[ServingRecord]:
    return [ServingRecord(model="tiny-a", revision=RA, since=since, admission="Evaluated")]


def _observed(*, serving: str | None = RA, revisions: dict | None = None, evaluations: dict | None = None,
              history: list[ServingRecord] | None = None, legacy_model: str | None = None) -> Observed:
    return Observed(serving=serving, revisions=revisions if revisions is not None else {RA: Revision("tiny-a", ready=True)},
                    evaluations=evaluations or {}, history=_serving_a() if history is None else history,
                    legacy_model=legacy_model)


def test_the_revision_follows_what_serves_not_how_many_replicas() -> None:
    assert RA != RB
    assert revision(A.model_copy(update={"replicas": 3, "extra_args": ["--ctx-size", "8192"]})) == RA
    assert revision(A.model_copy(update={"image": "registry.gov.qa/llama:2"})) != RA


def test_serving_renders_the_desired_revision_only() -> None:
    decision = decide(model=A, observed=_observed(), now=NOW)

    assert decision.state is RolloutState.SERVING
    assert (decision.serving, decision.rendered, decision.kept, decision.evaluations) == (RA, (RA,), (), ())
    assert decision.history == tuple(_serving_a())
    assert not decision.reconciling and not decision.stalled


def test_a_new_model_starts_beside_the_current_one_which_keeps_serving() -> None:
    decision = decide(model=B, observed=_observed(), now=NOW)

    assert decision.state is RolloutState.CANDIDATE_STARTING
    assert (decision.serving, decision.rendered, decision.kept, decision.evaluations) == (RA, (RB,), (RA,), ())
    assert decision.message == "candidate tiny-b starting beside tiny-a"
    assert decision.reconciling


def test_a_ready_candidate_is_evaluated_by_a_job() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.EVALUATING
    assert (decision.serving, decision.rendered, decision.kept, decision.evaluations) == (RA, (RB,), (RA,), (RB,))
    assert "evaluating candidate tiny-b on evals/chat.jsonl; tiny-a keeps serving" == decision.message


def test_a_running_job_keeps_it_evaluating() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="chat-eval-b")})

    assert decide(model=B, observed=observed, now=NOW).state is RolloutState.EVALUATING


def test_a_pass_switches_the_service_and_opens_the_history_with_its_evidence() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="chat-eval-b", finished=True,
                                                     report=_report("tiny-b", score=0.9, passed=True))})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.SWITCHING and decision.reason == "EvaluationPassed"
    assert (decision.serving, decision.rendered, decision.kept) == (RB, (RB,), (RA,))
    old, new = decision.history
    assert (old.model, old.until) == ("tiny-a", NOW)
    assert (new.model, new.revision, new.since, new.until, new.admission) == ("tiny-b", RB, NOW, None, "Evaluated")
    assert new.evaluation is not None
    assert (new.evaluation.score, new.evaluation.threshold, new.evaluation.version, new.evaluation.job) == (
        0.9, 0.8, "etag-1", "chat-eval-b")
    assert decision.message == "tiny-b passed: score 0.9 >= 0.8 on 10 examples of s3://weights/evals/chat.jsonl"


def test_after_the_switch_the_previous_revision_drains_then_goes() -> None:
    switched = decide(model=B, observed=_observed(
        revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
        evaluations={RB: Evaluation(job="j", finished=True, report=_report("tiny-b", score=0.9, passed=True))}),
        now=NOW).history
    observed = _observed(serving=RB, revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         history=list(switched))

    draining = decide(model=B, observed=observed, now=NOW + timedelta(seconds=DRAIN_SECONDS - 1))
    drained = decide(model=B, observed=observed, now=NOW + timedelta(seconds=DRAIN_SECONDS))

    assert draining.state is RolloutState.SERVING and draining.kept == (RA,)
    assert drained.kept == () and drained.rendered == (RB,) and drained.evaluations == ()
    assert drained.history == switched


def test_a_fail_keeps_the_current_model_and_says_why_with_the_worst_examples() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="chat-eval-b", finished=True,
                                                     report=_report("tiny-b", score=0.4, passed=False))})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.FAILED and decision.stalled and decision.reason == "EvaluationFailed"
    assert (decision.serving, decision.rendered, decision.kept, decision.evaluations) == (RA, (), (RA,), (RB,))
    assert decision.history == tuple(_serving_a())
    assert decision.message == (
        "candidate tiny-b failed its evaluation: score 0.4 < threshold 0.8 on 10 examples of "
        "s3://weights/evals/chat.jsonl (version etag-1); tiny-a keeps serving. "
        "Worst: 'Capital of Qatar?' -> 'Paris' (expected 'Doha')")
    assert decision.evidence is not None and decision.evidence.worst_examples[0].answer == "Paris"


def test_a_job_that_ran_out_of_time_fails_the_candidate_with_the_jobs_reason() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="j", finished=True,
                                                     failure="Job was active longer than specified deadline")})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.FAILED
    assert decision.message == ("candidate tiny-b could not be evaluated: Job was active longer than specified "
                                "deadline; tiny-a keeps serving")


def test_a_candidate_that_never_starts_fails_and_frees_its_capacity() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", stuck=True)})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.FAILED and decision.reason == "CandidateNotStarting"
    assert (decision.rendered, decision.kept) == ((), (RA,))


def test_a_new_spec_mid_evaluation_drops_the_old_candidate() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="j")})

    decision = decide(model=C, observed=observed, now=NOW)

    assert decision.state is RolloutState.CANDIDATE_STARTING
    assert (decision.rendered, decision.kept, decision.evaluations) == ((RC,), (RA,), ())


def test_setting_the_model_back_mid_evaluation_serves_on_and_drops_the_candidate() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="j")})

    decision = decide(model=A, observed=observed, now=NOW)

    assert decision.state is RolloutState.SERVING
    assert (decision.rendered, decision.kept, decision.evaluations) == ((RA,), (), ())


def _a_passed_then_b() -> tuple[EvaluationEvidence, list[ServingRecord]]:
    """tiny-a's pass, and a history in which it served, then tiny-b after it."""
    passed = evidence_of(Evaluation(job="j", finished=True, report=_report("tiny-a", score=0.95, passed=True)),
                         model="tiny-a")
    return passed, [ServingRecord(model="tiny-a", revision=RA, since=NOW - timedelta(days=2),
                                  until=NOW - timedelta(days=1), admission="Evaluated", evaluation=passed),
                    ServingRecord(model="tiny-b", revision=RB, since=NOW - timedelta(days=1), admission="Evaluated")]


def test_rollback_readmits_a_listed_model_that_passed_before_without_a_new_job() -> None:
    passed, history = _a_passed_then_b()
    back = _model("tiny-a", readmit=["tiny-a"])
    observed = _observed(serving=RB, revisions={RB: Revision("tiny-b", ready=True), RA: Revision("tiny-a", ready=True)},
                         history=history)

    decision = decide(model=back, observed=observed, now=NOW)

    assert decision.state is RolloutState.SWITCHING and decision.reason == "Readmitted"
    assert decision.serving == RA and decision.evaluations == ()
    assert decision.history[-1].admission == "Readmitted" and decision.history[-1].evaluation == passed
    assert "re-admitted (evaluation.readmit) on its pass of 2026-11-30T17:59:00Z: score 0.95 >= 0.8" in decision.message


def test_rollback_without_readmit_is_evaluated_again() -> None:
    history = [ServingRecord(model="tiny-a", revision=RA, since=NOW - timedelta(days=2), until=NOW - timedelta(days=1),
                             admission="Evaluated"),
               ServingRecord(model="tiny-b", revision=RB, since=NOW - timedelta(days=1), admission="Evaluated")]
    observed = _observed(serving=RB, revisions={RB: Revision("tiny-b", ready=True), RA: Revision("tiny-a", ready=True)},
                         history=history)

    assert decide(model=A, observed=observed, now=NOW).state is RolloutState.EVALUATING


def test_readmit_needs_a_recorded_pass() -> None:
    observed = _observed(serving=RB, revisions={RB: Revision("tiny-b", ready=True), RA: Revision("tiny-a", ready=True)},
                         history=[ServingRecord(model="tiny-b", revision=RB, since=NOW, admission="Initial")])

    assert decide(model=_model("tiny-a", readmit=["tiny-a"]), observed=observed, now=NOW).state is RolloutState.EVALUATING


def test_a_new_name_serves_nothing_until_its_first_model_passes() -> None:
    starting = decide(model=A, observed=_observed(serving=None, revisions={}, history=[]), now=NOW)
    passed = decide(model=A, observed=_observed(
        serving=None, revisions={RA: Revision("tiny-a", ready=True)}, history=[],
        evaluations={RA: Evaluation(job="j", finished=True, report=_report("tiny-a", score=1, passed=True))}), now=NOW)

    assert starting.state is RolloutState.CANDIDATE_STARTING and starting.serving is None
    assert starting.message == "candidate tiny-a starting beside nothing (no model has passed yet)"
    assert passed.state is RolloutState.SWITCHING and passed.serving == RA
    assert [r.model for r in passed.history] == ["tiny-a"]


def test_a_model_serving_before_evaluation_was_set_is_adopted_once_its_revision_is_ready() -> None:
    waiting = decide(model=A, observed=_observed(serving=None, revisions={}, history=[], legacy_model="tiny-a"), now=NOW)
    ready = decide(model=A, observed=_observed(serving=None, revisions={RA: Revision("tiny-a", ready=True)}, history=[],
                                               legacy_model="tiny-a"), now=NOW)

    assert (waiting.state, waiting.serving, waiting.rendered, waiting.keep_legacy) == (
        RolloutState.CANDIDATE_STARTING, None, (RA,), True)
    assert (ready.state, ready.serving, ready.keep_legacy) == (RolloutState.SWITCHING, RA, True)
    assert ready.history[-1].admission == "Initial"


def test_evaluation_added_together_with_a_new_model_is_refused_naming_the_way_out() -> None:
    decision = decide(model=B, observed=_observed(serving=None, revisions={}, history=[], legacy_model="tiny-a"),
                      now=NOW)

    assert decision.state is RolloutState.FAILED and decision.keep_legacy and decision.rendered == ()
    assert "set model back to tiny-a, let it be adopted, then change it" in decision.message


# --- an operator restarted at any point resumes from what it observes -----------------------------------------


def _cluster_after(decision, *, observed: Observed, ready: bool = True, job: Evaluation | None = None) -> Observed:
    """The cluster once a pass applied ``decision`` (and the status write may or may not have happened)."""
    revisions = {r: v for r, v in observed.revisions.items() if r in decision.rendered + decision.kept}
    for r in decision.rendered:
        revisions[r] = Revision(model=B.model if r == RB else A.model, ready=ready)
    evaluations = {r: (job if job is not None else observed.evaluations.get(r, Evaluation(job=f"eval-{r}")))
                   for r in decision.evaluations}
    return Observed(serving=decision.serving, revisions=revisions, evaluations=evaluations,
                    history=observed.history)


@pytest.mark.parametrize("lost", [None, 0, 1, 2, 3])
def test_a_restart_at_every_step_switches_once_and_leaves_nothing_behind(lost: int | None) -> None:
    """Every pass is a fresh operator; in pass ``lost`` it dies after applying, before its status
    write (the history it decided is lost)."""
    observed = _observed()
    states = []
    switches = 0
    report = Evaluation(job="eval", finished=True, report=_report("tiny-b", score=0.9, passed=True))
    for step in range(8):
        decision = decide(model=B, observed=observed, now=NOW + timedelta(seconds=40 * step))
        states.append(decision.state)
        switches += decision.serving != observed.serving
        observed = _cluster_after(decision, observed=observed, job=report if decision.evaluations else None)
        if step != lost:
            observed = Observed(serving=observed.serving, revisions=observed.revisions,
                                evaluations=observed.evaluations, history=decision.history)
    assert states[:3] == [RolloutState.CANDIDATE_STARTING, RolloutState.EVALUATING, RolloutState.SWITCHING]
    assert states[-1] is RolloutState.SERVING
    assert switches == 1
    assert set(observed.revisions) == {RB} and observed.evaluations == {}
    assert [r.model for r in decision.history] == ["tiny-a", "tiny-b"]
    assert decision.history[-1].admission == "Evaluated" and decision.history[-1].evaluation.job == "eval"


def test_a_restart_after_a_fail_neither_reruns_nor_switches() -> None:
    failed_job = Evaluation(job="eval", finished=True, report=_report("tiny-b", score=0.1, passed=False))
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: failed_job})

    first = decide(model=B, observed=observed, now=NOW)
    again = decide(model=B, observed=_cluster_after(first, observed=observed, job=failed_job), now=NOW)

    assert first.state is again.state is RolloutState.FAILED
    assert again.serving == RA and again.rendered == () and again.evaluations == (RB,)


def test_a_candidate_that_stops_being_ready_mid_evaluation_keeps_its_job() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=False)},
                         evaluations={RB: Evaluation(job="eval")})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.CANDIDATE_STARTING
    assert (decision.serving, decision.rendered, decision.evaluations) == (RA, (RB,), (RB,))


def test_a_passed_job_whose_candidate_went_is_not_run_again() -> None:
    passed = Evaluation(job="eval", finished=True, report=_report("tiny-b", score=0.9, passed=True))
    gone = _observed(revisions={RA: Revision("tiny-a", ready=True)}, evaluations={RB: passed})
    back = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                     evaluations={RB: passed})

    assert decide(model=B, observed=gone, now=NOW).evaluations == (RB,)
    assert decide(model=B, observed=back, now=NOW).state is RolloutState.SWITCHING


def test_readmit_added_after_a_failed_evaluation_readmits_without_running_it_again() -> None:
    _, history = _a_passed_then_b()
    failed = Evaluation(job="eval-a", finished=True, report=_report("tiny-a", score=0.1, passed=False))
    back = _model("tiny-a", readmit=["tiny-a"])

    starting = decide(model=back, now=NOW, observed=_observed(
        serving=RB, revisions={RB: Revision("tiny-b", ready=True)}, evaluations={RA: failed}, history=history))
    ready = decide(model=back, now=NOW, observed=_observed(
        serving=RB, revisions={RB: Revision("tiny-b", ready=True), RA: Revision("tiny-a", ready=True)},
        evaluations={RA: failed}, history=history))

    assert (starting.state, starting.rendered) == (RolloutState.CANDIDATE_STARTING, (RA,))
    assert (ready.state, ready.serving, ready.history[-1].admission) == (RolloutState.SWITCHING, RA, "Readmitted")


def test_a_condition_quotes_the_worst_examples_shortened() -> None:
    report = _report("tiny-b", score=0.1, passed=False)
    report["worstExamples"][0]["answer"] = "x" * 190
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True)},
                         evaluations={RB: Evaluation(job="j", finished=True, report=report)})

    decision = decide(model=B, observed=observed, now=NOW)

    assert "-> '" + "x" * 59 + "…' (expected 'Doha')" in decision.message
    assert decision.evidence.worst_examples[0].answer == "x" * 190


def test_an_evaluation_whose_pod_cannot_be_placed_says_why() -> None:
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True), RB: Revision("tiny-b", ready=True)},
                         evaluations={RB: Evaluation(job="eval", waiting="0/1 nodes are available: 1 Insufficient cpu.")})

    decision = decide(model=B, observed=observed, now=NOW)

    assert decision.state is RolloutState.EVALUATING
    assert decision.message == ("evaluating candidate tiny-b on evals/chat.jsonl (its Job's pod waits: 0/1 nodes are "
                                "available: 1 Insufficient cpu.); tiny-a keeps serving")


# --- evaluation.canary: a share of the endpoints before the switch --------------------------------------------

CANARY = {"weight": 25, "durationSeconds": 600}
BC = _model("tiny-b", canary=CANARY).model_copy(update={"replicas": 4})
PASSED_B = Evaluation(job="chat-eval-b", finished=True, report=_report("tiny-b", score=0.9, passed=True))


def _in_canary(*, candidate: Revision, since: datetime = NOW, aborted: AbortMark | None = None,
               canary: bool = True) -> Observed:
    return Observed(serving=RA, revisions={RA: Revision("tiny-a", ready=True, replicas=4, ready_replicas=4),
                                           RB: candidate},
                    evaluations={RB: PASSED_B}, history=_serving_a(),
                    canary=CanaryMark(RB, since) if canary else None, aborted=aborted)


@pytest.mark.parametrize(("weight", "serving", "share"), [(25, 4, 1), (30, 4, 2), (50, 3, 2), (1, 1, 1), (50, 1, 1)])
def test_a_canarys_share_is_the_ceiling_of_weight_percent_of_the_serving_replicas(weight, serving, share) -> None:
    assert canary_replicas(weight=weight, serving=serving) == share


def test_a_pass_with_a_canary_runs_the_candidate_on_its_share_beside_the_current_one() -> None:
    full = Revision("tiny-b", ready=True, replicas=4, ready_replicas=4)

    decision = decide(model=BC, observed=_in_canary(candidate=full, canary=False), now=NOW)

    assert decision.state is RolloutState.CANARY and decision.reason == "Canary" and decision.reconciling
    assert (decision.serving, decision.rendered, decision.kept, decision.evaluations) == (RA, (RB,), (RA,), (RB,))
    assert (decision.canary, decision.replicas) == (CanaryMark(RB, NOW), 1)
    assert decision.history == tuple(_serving_a()), "nothing switched yet"
    assert decision.message == ("canary: tiny-b on 1 replica(s) beside tiny-a, both behind chat, "
                                "until 2026-11-30T18:10:00Z")


def test_a_canary_keeps_its_start_across_passes() -> None:
    share = Revision("tiny-b", ready=True, replicas=1, ready_replicas=1)
    since = NOW - timedelta(seconds=300)

    decision = decide(model=BC, observed=_in_canary(candidate=share, since=since), now=NOW)

    assert decision.state is RolloutState.CANARY and decision.canary == CanaryMark(RB, since)
    assert decision.replicas == 1 and decision.serving == RA


def test_a_canary_that_lasted_its_duration_scales_the_candidate_up_before_the_switch() -> None:
    share = Revision("tiny-b", ready=True, replicas=1, ready_replicas=1)
    since = NOW - timedelta(seconds=600)

    decision = decide(model=BC, observed=_in_canary(candidate=share, since=since), now=NOW)

    assert decision.state is RolloutState.CANARY and decision.canary == CanaryMark(RB, since)
    assert decision.replicas is None, "the spec's 4 replicas"
    assert decision.message == "canary of tiny-b over: scaling it to 4 replica(s) before the switch; both still behind chat"


def test_a_canary_over_with_every_replica_ready_switches() -> None:
    full = Revision("tiny-b", ready=True, replicas=4, ready_replicas=4)

    decision = decide(model=BC, observed=_in_canary(candidate=full, since=NOW - timedelta(seconds=700)), now=NOW)

    assert decision.state is RolloutState.SWITCHING and decision.reason == "CanaryPassed"
    assert (decision.serving, decision.canary, decision.replicas) == (RB, None, None)
    assert decision.history[-1].admission == "Evaluated" and decision.history[-1].evaluation.job == "chat-eval-b"
    assert decision.message == "tiny-b passed its evaluation (score 0.9 >= 0.8) and its canary of 600s"


@pytest.mark.parametrize(("candidate", "why"), [
    (Revision("tiny-b", replicas=1, ready_replicas=0), "0 of its 1 canary replica(s) ready"),
    (Revision("tiny-b", ready=True, replicas=1, ready_replicas=1, last_restart=NOW - timedelta(seconds=5)),
     "a container of its pods restarted at 2026-11-30T17:59:55Z"),
    (None, "0 of its 1 canary replica(s) ready"),
])
def test_an_unready_or_restarted_candidate_aborts_the_canary_and_the_current_model_serves_alone(candidate, why) -> None:
    observed = _in_canary(candidate=candidate or Revision("tiny-b"), since=NOW - timedelta(seconds=60))
    if candidate is None:
        observed = replace(observed, revisions={RA: observed.revisions[RA]})

    decision = decide(model=BC, observed=observed, now=NOW)

    assert decision.state is RolloutState.FAILED and decision.reason == "CanaryAborted" and decision.stalled
    assert (decision.serving, decision.rendered, decision.kept, decision.canary) == (RA, (), (RA,), None)
    assert decision.message == (f"candidate tiny-b aborted during its canary: {why}; tiny-a keeps serving alone. "
                                "Fix the model, or set model back")
    assert decision.aborted == AbortMark(RB, decision.message)
    assert decision.evaluations == (RB,) and decision.evidence.passed, "its passed Job stays as evidence"
    assert decision.history == tuple(_serving_a())


def test_a_restart_before_the_canary_began_does_not_abort_it() -> None:
    share = Revision("tiny-b", ready=True, replicas=1, ready_replicas=1, last_restart=NOW - timedelta(seconds=90))

    assert decide(model=BC, observed=_in_canary(candidate=share, since=NOW - timedelta(seconds=60)),
                  now=NOW).state is RolloutState.CANARY


def test_an_aborted_canary_stays_failed_without_starting_the_candidate_again_until_the_spec_changes() -> None:
    mark = AbortMark(RB, "candidate tiny-b aborted during its canary: ...")
    after = Observed(serving=RA, revisions={RA: Revision("tiny-a", ready=True, replicas=4, ready_replicas=4)},
                     evaluations={RB: PASSED_B}, history=_serving_a(), aborted=mark)

    again = decide(model=BC, observed=after, now=NOW + timedelta(hours=1))
    other = decide(model=_model("tiny-c", canary=CANARY), observed=after, now=NOW)
    back = decide(model=_model("tiny-a", canary=CANARY), observed=after, now=NOW)

    assert (again.state, again.reason, again.message, again.aborted) == (
        RolloutState.FAILED, "CanaryAborted", mark.message, mark)
    assert (again.rendered, again.evaluations) == ((), (RB,))
    assert (other.state, other.rendered, other.aborted) == (RolloutState.CANDIDATE_STARTING, (RC,), None)
    assert (back.state, back.aborted) == (RolloutState.SERVING, None)


def test_readmission_and_a_first_model_skip_the_canary() -> None:
    _, history = _a_passed_then_b()
    rollback = decide(model=_model("tiny-a", readmit=["tiny-a"], canary=CANARY), now=NOW, observed=_observed(
        serving=RB, revisions={RB: Revision("tiny-b", ready=True), RA: Revision("tiny-a", ready=True)}, history=history))
    first = decide(model=_model("tiny-a", canary=CANARY), now=NOW, observed=_observed(
        serving=None, revisions={RA: Revision("tiny-a", ready=True)}, history=[],
        evaluations={RA: Evaluation(job="j", finished=True, report=_report("tiny-a", score=1, passed=True))}))

    assert (rollback.state, rollback.serving, rollback.canary) == (RolloutState.SWITCHING, RA, None)
    assert (first.state, first.serving, first.canary) == (RolloutState.SWITCHING, RA, None)


def test_canary_removed_from_the_spec_mid_canary_switches_at_once() -> None:
    share = Revision("tiny-b", ready=True, replicas=1, ready_replicas=1)

    decision = decide(model=_model("tiny-b"), observed=_in_canary(candidate=share), now=NOW + timedelta(seconds=5))

    assert (decision.state, decision.serving, decision.canary) == (RolloutState.SWITCHING, RB, None)


@pytest.mark.parametrize("lost", [None, 1, 2, 3, 4])
def test_a_restart_at_every_step_of_a_canary_lasts_its_duration_and_switches_once(lost: int | None) -> None:
    """Each pass is a fresh operator reading only the cluster (the Service's canary marks, the
    Deployments' replicas); in pass ``lost`` it dies after applying, before its status write."""
    model = _model("tiny-b", canary={"weight": 25, "durationSeconds": 100}).model_copy(update={"replicas": 4})
    observed = _observed(revisions={RA: Revision("tiny-a", ready=True, replicas=4, ready_replicas=4)})
    states, switched_at, canary_at = [], None, None
    for step in range(10):
        now = NOW + timedelta(seconds=40 * step)
        decision = decide(model=model, observed=observed, now=now)
        states.append(decision.state)
        if decision.state is RolloutState.CANARY and canary_at is None:
            canary_at = now
        if decision.serving != observed.serving:
            assert switched_at is None, "switched twice"
            switched_at = now
        revisions = {r: v for r, v in observed.revisions.items() if r in decision.kept}
        for r in decision.rendered:
            # Replicas start within a pass: a pass sees the count the previous one asked for, ready.
            want = decision.replicas if decision.replicas is not None else model.replicas
            revisions[r] = Revision("tiny-b", ready=True, replicas=want, ready_replicas=want)
        observed = Observed(
            serving=decision.serving, revisions=revisions,
            evaluations={r: PASSED_B for r in decision.evaluations},
            history=observed.history if step == lost else decision.history,
            canary=decision.canary, aborted=decision.aborted)
    assert states[:3] == [RolloutState.CANDIDATE_STARTING, RolloutState.EVALUATING, RolloutState.CANARY]
    assert RolloutState.FAILED not in states and states[-1] is RolloutState.SERVING
    assert switched_at is not None and canary_at is not None
    assert switched_at - canary_at >= timedelta(seconds=100)
    assert set(observed.revisions) == {RB} and observed.canary is None
    assert [r.model for r in decision.history] == ["tiny-a", "tiny-b"]
