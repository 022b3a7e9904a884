"""Validated blue/green model rollouts, end to end on the real node.

The data path's CPU stack (``sovereign_dev.datapath``) with an evaluation on its model ``chat``:
everything runs in real containers, the evaluation too (a Job of the operator image running
``sovereign evaluate`` against the candidate's own Service, reading its dataset from the
in-country MinIO bucket). A user

1. creates the stack with tiny-llama-a: nothing answers as chat until a's evaluation passed;
2. swaps model to tiny-llama-b: b starts beside a, is evaluated and takes over the name with
   not one failed request while a client keeps asking;
3. swaps back to tiny-llama-a under an evaluation whose expected answers are b's own: a fails,
   b keeps serving, and the stack says why (Stalled, the score, the worst examples, an Event);
4. lists tiny-llama-a in evaluation.readmit: a, which passed before, serves again without a new Job;
5. swaps to tiny-llama-b with evaluation.canary: after its pass b serves beside a, both answering
   as chat, for the canary's seconds, then takes over, with no failed request;

and ``sovereign report`` shows the lineage. What is asserted is what a user sees: the stack's
status, conditions and Events, the Jobs, and the answers through the chat Service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from sovereign.policy.rollout import revision
from sovereign.api import ModelSpec
from sovereign.services.evaluate import DEFAULT_MAX_TOKENS, ask
from sovereign_dev.cluster import DevCluster
from sovereign_dev.datapath import MODEL, STACK, STORE, DataPath, ModelResources
from sovereign_dev.pytest_plugin import REAL_NODE_REGION
from sovereign_dev.processes import free_port
from sovereign_dev.scenario import OperatorProcess, WebhookOperator, delete_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

A, B = "tiny-llama-a", "tiny-llama-b"
WAIT = 300
PROMPTS = ["Which region serves this model?", "Say hello.", "Count to three.", "Name a colour."]
SMOKE = "evals/smoke.jsonl"
AS_B = "evals/answers-of-b.jsonl"
#: Long enough to see both models answer through the chat Service, short for the test.
CANARY_SECONDS = 20


def _evaluation(dataset: str, scorer: dict[str, Any], threshold: float, **more: Any) -> dict[str, Any]:
    return {"dataset": {"dataStore": STORE, "path": dataset}, "scorers": [scorer], "threshold": threshold,
            "sampleSize": len(PROMPTS), "timeoutSeconds": 300, **more}


#: Any answer passes: the mechanics of gating, not a judgement of random models.
ANYTHING = _evaluation(SMOKE, {"regex": {}}, 0.5)
#: b's own greedy answers, exactly: b passes, another model does not.
LIKE_B = _evaluation(AS_B, {"exactMatch": {"caseSensitive": True}}, 0.75)


@pytest.fixture
def data_path(real_cluster: DevCluster, real_api_client, real_namespace: str, real_minio_servers) -> DataPath:
    # Two replicas side by side and the evaluation Job must fit the real node's two cores.
    path = DataPath(cluster=real_cluster, api=real_api_client, namespace=real_namespace,
                    store=real_minio_servers[REAL_NODE_REGION], models=(A, B), resources=ModelResources(cpu="500m"))
    path.prepare()
    lines = [json.dumps({"prompt": prompt, "expected": "[\\s\\S]*"}) for prompt in PROMPTS]
    path.store.client().put_object(Bucket=path.bucket, Key=SMOKE, Body="\n".join(lines).encode())
    return path


@pytest.fixture
def operator(real_cluster: DevCluster, real_api_client, real_namespace: str, data_path: DataPath,
             tmp_path: Path) -> Iterator[WebhookOperator]:
    """The operator as the chart runs it: residency admission judges the evaluation Job's pod
    too, and its metrics are served."""
    process = WebhookOperator(kubeconfig=real_cluster.kubeconfig, namespaces=[real_namespace],
                              log=tmp_path / "operator.log", audit_seconds=3, metrics_port=free_port()).start()
    yield process
    try:
        delete_stack(real_api_client, real_namespace, STACK)
    finally:
        process.stop()
        # They fail closed and would outlive the operator in this shared cluster.
        WebhookOperator.remove_webhooks(real_api_client)


def _metric(operator: WebhookOperator, name: str, **labels: str) -> float:
    """The value of the operator's series ``name`` with ``labels``; 0 when absent."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).read().decode()
    return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == name and labels.items() <= sample.labels.items()), 0.0)


def _wait(what: str, predicate: Callable[[], Any], *, path: DataPath, operator: OperatorProcess) -> Any:
    def tail() -> str:
        rollout = [(m["name"], m.get("rollout")) for m in (path.stack().get("status") or {}).get("models", [])]
        return f"rollout: {rollout}\noperator log:\n{operator.tail()}"

    return path.wait(what, predicate, timeout=WAIT, log_tail=tail)


def _status(path: DataPath, key: str) -> Any:
    return path.stack()["status"]["models"][0].get(key)


def _serving_file(path: DataPath) -> str:
    """The GGUF file the chat Service's replicas serve (llama-server's /props)."""
    return path.props(timeout=5)["model_path"].rpartition("/")[2]


def _true(path: DataPath, kind: str) -> bool:
    return path.conditions().get(kind, {}).get("status") == "True"


def _spec(path: DataPath, model: str) -> ModelSpec:
    return ModelSpec.model_validate(path.document(model=model, evaluation=ANYTHING)["spec"]["models"][0])


class _Client(threading.Thread):
    """Asks the chat Service over and over, as an application would, counting what failed."""

    def __init__(self, path: DataPath) -> None:
        super().__init__(daemon=True)
        self.path, self.url = path, path.service_url(MODEL)
        self.answers: list[str] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.path.chat(content="Say hello", max_tokens=4, timeout=30)
                self.answers.append("ok")
            except Exception as err:  # noqa: BLE001 - every failure a user would see counts
                self.failures.append(repr(err))
            time.sleep(0.05)

    def stop(self) -> _Client:
        self.stopping.set()
        self.join(timeout=60)
        return self


def test_a_model_serves_only_after_it_passes_and_a_failing_one_never_does(
        real_cluster: DevCluster, data_path: DataPath, operator: WebhookOperator) -> None:
    path = data_path
    batch = client.BatchV1Api(path.api)
    rev_a, rev_b = revision(_spec(path, A)), revision(_spec(path, B))

    # 1. A new stack: a is evaluated before the name serves it.
    path.apply(model=A, evaluation=ANYTHING)
    _wait("a evaluated and the stack Ready", lambda: _true(path, "Ready"), path=path, operator=operator)
    # kube-proxy programs the Service's first endpoint a moment after the switch.
    _wait("a answering as chat", lambda: _serving_file(path) == f"{A}.gguf", path=path, operator=operator)
    (first,) = _status(path, "history")
    assert (first["model"], first["admission"], first["evaluation"]["passed"]) == (A, "Evaluated", True)
    assert first["evaluation"]["dataset"] == f"s3://{path.bucket}/{SMOKE}"
    assert first["evaluation"]["job"] == f"{MODEL}-eval-{rev_a}"
    service = client.CoreV1Api(path.api).read_namespaced_service(MODEL, path.namespace)
    assert service.spec.selector["sovereign.ai/revision"] == rev_a

    # 2. Swap to b while a client keeps asking: b is evaluated beside a, then takes over.
    asking = _Client(path)
    asking.start()
    path.apply(model=B, evaluation=ANYTHING)
    generation = path.stack()["metadata"]["generation"]
    _wait("b serving and the stack Ready", lambda: (
        _serving_file(path) == f"{B}.gguf" and path.stack()["status"].get("observedGeneration") == generation
        and _true(path, "Ready")), path=path, operator=operator)
    _wait("a's replicas drained and gone", lambda: not client.AppsV1Api(path.api).list_namespaced_deployment(
        path.namespace, label_selector=f"sovereign.ai/revision={rev_a}").items, path=path, operator=operator)
    asking.stop()
    assert asking.answers and not asking.failures, f"failed requests during the switch: {asking.failures[:5]}"
    history = _status(path, "history")
    assert [(r["model"], r["admission"], "until" in r) for r in history] == [
        (A, "Evaluated", True), (B, "Evaluated", False)]

    # 3. b's own answers become the dataset; a, evaluated on them, fails and b keeps serving.
    url = path.service_url(MODEL) + "/v1"
    lines = [json.dumps({"prompt": p, "expected": ask(base_url=url, model=MODEL, max_tokens=DEFAULT_MAX_TOKENS,
                                                       timeout=60, messages=[{"role": "user", "content": p}])})
             for p in PROMPTS]
    path.store.client().put_object(Bucket=path.bucket, Key=AS_B, Body="\n".join(lines).encode())
    asking = _Client(path)
    asking.start()
    path.apply(model=A, evaluation=LIKE_B)
    _wait("a's evaluation failed and the stack Stalled", lambda: _true(path, "Stalled"), path=path, operator=operator)
    models_ready = path.conditions()["ModelsReady"]
    assert (models_ready["status"], models_ready["reason"]) == ("False", "EvaluationFailed")
    assert f"candidate {A} failed its evaluation: score" in models_ready["message"]
    assert f"< threshold 0.75 on {len(PROMPTS)} examples of s3://{path.bucket}/{AS_B}" in models_ready["message"]
    assert f"{B} keeps serving. Worst: " in models_ready["message"]
    rollout = _status(path, "rollout")
    assert (rollout["state"], rollout["candidate"], rollout["evaluation"]["passed"]) == ("Failed", A, False)
    assert rollout["evaluation"]["worstExamples"][0]["prompt"] in PROMPTS
    assert _serving_file(path) == f"{B}.gguf"
    _wait("the failed candidate's replicas gone", lambda: not client.AppsV1Api(path.api).list_namespaced_deployment(
        path.namespace, label_selector=f"sovereign.ai/revision={rev_a}").items, path=path, operator=operator)
    job = batch.read_namespaced_job(f"{MODEL}-eval-{rev_a}", path.namespace)
    assert job.status.failed == 1 or job.status.succeeded == 1, "the Job stays as evidence"

    def failed_event() -> bool:
        # Recorded right after the status write that made the stack Stalled.
        events = client.CoreV1Api(path.api).list_namespaced_event(
            path.namespace, field_selector=f"involvedObject.name={STACK},involvedObject.kind=SovereignStack").items
        return any(e.reason == "EvaluationFailed" and e.type == "Warning" and A in e.message for e in events)

    _wait("a Warning Event EvaluationFailed on the stack", failed_event, path=path, operator=operator)
    asking.stop()
    assert asking.answers and not asking.failures, f"failed requests while a was tried: {asking.failures[:5]}"
    series = {"namespace": path.namespace, "stack": STACK, "model": MODEL}
    assert _metric(operator, "sovereign_model_evaluations_total", **series, result="failed") == 1
    assert _metric(operator, "sovereign_model_evaluations_total", **series, result="passed") == 2
    assert _metric(operator, "sovereign_model_evaluation_score", **series) < 0.75
    assert _metric(operator, "sovereign_model_replicas", **series) == 1, "b's Deployment, serving"

    # 4. a passed before: listed in readmit, it serves again without a new evaluation.
    path.apply(model=A, evaluation={**LIKE_B, "readmit": [A]})
    _wait("a re-admitted and the stack Ready", lambda: _serving_file(path) == f"{A}.gguf" and _true(path, "Ready"),
          path=path, operator=operator)
    last = _status(path, "history")[-1]
    assert (last["model"], last["admission"]) == (A, "Readmitted")
    assert last["evaluation"]["dataset"] == f"s3://{path.bucket}/{SMOKE}", "the evidence of a's earlier pass"

    # The auditor's report lists who served chat, when, and on what evidence.
    report = subprocess.run([sys.executable, "-m", "sovereign", "report", STACK, "-n", path.namespace, "--format",
                             "json", "--no-store-checks", "--kubeconfig", real_cluster.kubeconfig],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    (lineage,) = json.loads(report.stdout)["lineage"]
    assert [(r["model"], r["admission"]) for r in lineage["history"]] == [
        (A, "Evaluated"), (B, "Evaluated"), (A, "Readmitted")]

    # 5. With a canary, b takes a share of live traffic beside a before the switch: both answer as chat.
    # b starts afresh: a candidate whose previous replicas still drain is evaluated before its own
    # Service has endpoints, and its Job is refused (a known race, not the canary's).
    _wait("b's replicas drained and gone", lambda: not client.AppsV1Api(path.api).list_namespaced_deployment(
        path.namespace, label_selector=f"sovereign.ai/revision={rev_b}").items, path=path, operator=operator)
    asking = _Client(path)
    asking.start()
    path.apply(model=B, evaluation={**ANYTHING, "canary": {"weight": 50, "durationSeconds": CANARY_SECONDS}})
    _wait("b in its canary", lambda: (_status(path, "rollout") or {}).get("state") == "Canary",
          path=path, operator=operator)
    service = client.CoreV1Api(path.api).read_namespaced_service(MODEL, path.namespace)
    assert "sovereign.ai/revision" not in service.spec.selector, "the Service selects both revisions"
    assert service.metadata.annotations["sovereign.ai/canary-revision"] == rev_b
    assert service.metadata.annotations["sovereign.ai/serving-revision"] == rev_a
    seen: set[str] = set()
    _wait("a and b both answering as chat during the canary", lambda: seen.add(_serving_file(path)) or (
        seen == {f"{A}.gguf", f"{B}.gguf"}), path=path, operator=operator)
    assert (_status(path, "rollout") or {}).get("state") == "Canary", "both seen within the canary"
    _wait("b serving after its canary and the stack Ready", lambda: (
        _serving_file(path) == f"{B}.gguf" and _true(path, "Ready")), path=path, operator=operator)
    asking.stop()
    assert asking.answers and not asking.failures, f"failed requests during the canary: {asking.failures[:5]}"
    last = _status(path, "history")[-1]
    assert (last["model"], last["admission"]) == (B, "Evaluated")
    assert client.CoreV1Api(path.api).read_namespaced_service(MODEL, path.namespace).spec.selector[
        "sovereign.ai/revision"] == rev_b
