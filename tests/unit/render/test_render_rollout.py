"""What a model with evaluation renders at each step of its blue/green rollout (the rollout sample):
revision Deployments, the candidate's own Service, the evaluation Job the real ``sovereign
evaluate`` reads, and a logical Service that selects only the revision that passed (or, during a
canary, both revisions, with the candidate on its share of replicas)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from render_inputs import NAMESPACE, sample_document, stack_from  # next to this file

from sovereign.api import Canary
from sovereign.cli.evaluate import command as evaluate_command
from sovereign.policy.rollout import CanaryMark, Evaluation, Observed, Revision, decide, revision
from sovereign.render.facts import ClusterFacts
from sovereign.render.names import REVISION_LABEL, ObjectKey, object_key
from sovereign.render.stack import render_stack

NOW = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)


@pytest.fixture
def stack():
    return stack_from(sample_document("rollout"))


def _objects(stack, **rollouts) -> dict[ObjectKey, dict]:
    return {object_key(obj): obj for obj in render_stack(stack, ClusterFacts(rollouts=rollouts or None, pod_monitors=False))}


def _named(objects: dict[ObjectKey, dict], kind: str, name: str) -> dict | None:
    return next((obj for key, obj in objects.items() if key.kind == kind and key.name == name), None)


def _kinds(objects: dict[ObjectKey, dict], prefix: str) -> list[tuple[str, str]]:
    return sorted((key.kind, key.name) for key in objects if key.name.startswith(prefix))


def test_a_new_model_starts_as_a_candidate_and_its_name_serves_no_pod(stack) -> None:
    rev = revision(stack.spec.models[0])

    objects = _objects(stack)

    assert _kinds(objects, "chat") == [("Deployment", f"chat-{rev}"), ("Service", "chat"), ("Service", f"chat-{rev}")]
    deployment = _named(objects, "Deployment", f"chat-{rev}")
    assert deployment["spec"]["selector"]["matchLabels"][REVISION_LABEL] == rev
    assert deployment["spec"]["template"]["metadata"]["labels"][REVISION_LABEL] == rev
    assert deployment["metadata"]["labels"][REVISION_LABEL] == rev
    assert _named(objects, "Service", "chat")["spec"]["selector"][REVISION_LABEL] == "none"
    assert _named(objects, "Service", f"chat-{rev}")["spec"]["selector"][REVISION_LABEL] == rev
    # The judge has no evaluation: rendered as before, under its own name.
    assert _kinds(objects, "judge") == [("Deployment", "judge"), ("Service", "judge")]


def _evaluating(stack):
    old = stack.spec.models[0].model_copy(update={"model": "qwen2.5-0.5b-instruct-q4_k_m"})
    candidate = stack.spec.models[0]
    serving, rev = revision(old), revision(candidate)
    observed = Observed(serving=serving, revisions={serving: Revision(old.model, ready=True),
                                                    rev: Revision(candidate.model, ready=True)})
    return serving, rev, decide(model=candidate, observed=observed, now=NOW)


def test_while_a_candidate_is_evaluated_the_name_stays_on_the_current_revision(stack) -> None:
    serving, rev, decision = _evaluating(stack)

    objects = _objects(stack, chat=decision)

    assert _named(objects, "Service", "chat")["spec"]["selector"][REVISION_LABEL] == serving
    assert _named(objects, "Deployment", f"chat-{rev}") is not None
    assert _named(objects, "Deployment", f"chat-{serving}") is None, "kept as it is, not rendered"
    job = _named(objects, "Job", f"chat-eval-{rev}")
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 1800
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]} in (
        terms[0]["matchExpressions"])
    assert job["spec"]["template"]["metadata"]["labels"][REVISION_LABEL] == rev


def test_the_jobs_environment_is_what_sovereign_evaluate_reads(stack, monkeypatch) -> None:
    _, rev, decision = _evaluating(stack)
    job = _named(_objects(stack, chat=decision), "Job", f"chat-eval-{rev}")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])

    context = evaluate_command.make_context("evaluate", [])

    assert container["command"] == ["sovereign", "evaluate"]
    assert context.params["bucket"] == "qa-model-weights" and context.params["region"] == "me-central-1"
    assert context.params["model"] == "qwen2.5-1.5b-instruct-q4_k_m"
    assert context.params["endpoint"] == f"http://chat-{rev}.{NAMESPACE}.svc:8000/v1"
    assert context.params["judges"] == (f"judge=http://judge.{NAMESPACE}.svc:8000/v1",)
    assert str(context.params["report_file"]) == "/dev/termination-log"
    assert json.loads(context.params["spec_text"])["dataset"] == {
        "dataStore": "weights", "path": "evals/citizen-services-ar.jsonl"}


def test_after_a_pass_the_name_selects_the_new_revision_and_the_candidate_service_goes(stack) -> None:
    serving, rev, decision = _evaluating(stack)
    passed = Evaluation(job=f"chat-eval-{rev}", finished=True, report={"passed": True, "score": 0.9, "threshold": 0.8})
    switched = decide(model=stack.spec.models[0], now=NOW, observed=Observed(
        serving=serving, revisions={serving: Revision("old", ready=True), rev: Revision("new", ready=True)},
        evaluations={rev: passed}))

    objects = _objects(stack, chat=switched)

    assert _named(objects, "Service", "chat")["spec"]["selector"][REVISION_LABEL] == rev
    assert _named(objects, "Service", f"chat-{rev}") is None
    assert _named(objects, "Job", f"chat-eval-{rev}") is not None, "kept until the history records it"


def test_after_a_fail_the_candidate_replicas_go_and_the_job_stays(stack) -> None:
    serving, rev, _ = _evaluating(stack)
    failed = decide(model=stack.spec.models[0], now=NOW, observed=Observed(
        serving=serving, revisions={serving: Revision("old", ready=True), rev: Revision("new", ready=True)},
        evaluations={rev: Evaluation(job="j", finished=True, report={"passed": False, "score": 0.1})}))

    objects = _objects(stack, chat=failed)

    assert _kinds(objects, "chat") == [("Job", f"chat-eval-{rev}"), ("Service", "chat")]
    assert _named(objects, "Service", "chat")["spec"]["selector"][REVISION_LABEL] == serving


def test_a_model_adopted_from_before_evaluation_keeps_its_old_service_until_its_revision_serves(stack) -> None:
    model = stack.spec.models[0]
    adopting = decide(model=model, now=NOW, observed=Observed(serving=None, legacy_model=model.model))

    objects = _objects(stack, chat=adopting)

    assert _kinds(objects, "chat") == [("Deployment", f"chat-{revision(model)}"),
                                       ("Service", f"chat-{revision(model)}")]


def test_the_same_rollout_renders_the_same_objects() -> None:
    stack = stack_from(sample_document("rollout"))
    _, _, decision = _evaluating(stack)

    assert render_stack(stack, ClusterFacts(rollouts={"chat": decision})) == render_stack(
        stack_from(sample_document("rollout")), replace(ClusterFacts(), rollouts={"chat": decision}))


def _with_canary(stack):
    model = stack.spec.models[0]
    evaluation = model.evaluation.model_copy(update={"canary": Canary(weight=50, duration_seconds=30)})
    chat = model.model_copy(update={"evaluation": evaluation, "replicas": 3})
    return stack.model_copy(update={"spec": stack.spec.model_copy(update={"models": [chat, *stack.spec.models[1:]]})})


def test_in_a_canary_the_name_selects_both_revisions_and_the_candidate_runs_its_share(stack) -> None:
    stack = _with_canary(stack)
    serving, rev, _ = _evaluating(stack)
    passed = Evaluation(job=f"chat-eval-{rev}", finished=True, report={"passed": True, "score": 0.9, "threshold": 0.8})
    canary = decide(model=stack.spec.models[0], now=NOW, observed=Observed(
        serving=serving, evaluations={rev: passed},
        revisions={serving: Revision("qwen2.5-0.5b-instruct-q4_k_m", ready=True, replicas=3, ready_replicas=3),
                   rev: Revision("qwen2.5-1.5b-instruct-q4_k_m", ready=True, replicas=3, ready_replicas=3)}))

    objects = _objects(stack, chat=canary)

    service = _named(objects, "Service", "chat")
    assert REVISION_LABEL not in service["spec"]["selector"], "both revisions' pods are endpoints"
    assert service["spec"]["selector"]["app.kubernetes.io/name"] == "chat"
    assert {key: value for key, value in service["metadata"]["annotations"].items() if "canary" in key or "serving" in key} == {
        "sovereign.ai/serving-revision": serving, "sovereign.ai/canary-revision": rev,
        "sovereign.ai/canary-since": "2026-11-30T18:00:00Z"}
    assert _named(objects, "Deployment", f"chat-{rev}")["spec"]["replicas"] == 2, "ceil(50% of 3)"
    assert _named(objects, "Deployment", f"chat-{serving}") is None, "the serving revision is kept as it is"


def test_after_an_aborted_canary_the_name_selects_the_current_revision_and_records_why(stack) -> None:
    stack = _with_canary(stack)
    serving, rev, _ = _evaluating(stack)
    aborted = decide(model=stack.spec.models[0], now=NOW, observed=Observed(
        serving=serving, evaluations={rev: Evaluation(job="j", finished=True, report={"passed": True})},
        revisions={serving: Revision("qwen2.5-0.5b-instruct-q4_k_m", ready=True, replicas=3, ready_replicas=3),
                   rev: Revision("qwen2.5-1.5b-instruct-q4_k_m", replicas=2, ready_replicas=1)},
        canary=CanaryMark(rev, NOW)))

    objects = _objects(stack, chat=aborted)

    service = _named(objects, "Service", "chat")
    assert service["spec"]["selector"][REVISION_LABEL] == serving
    assert service["metadata"]["annotations"]["sovereign.ai/canary-aborted"] == (
        f"{rev}: candidate qwen2.5-1.5b-instruct-q4_k_m aborted during its canary: 1 of its 2 canary replica(s) "
        "ready; qwen2.5-0.5b-instruct-q4_k_m keeps serving alone. Fix the model, or set model back")
    assert _kinds(objects, "chat") == [("Job", f"chat-eval-{rev}"), ("PodDisruptionBudget", "chat"), ("Service", "chat")]
