"""The evaluation Job of a blue/green model: ``sovereign evaluate`` against one revision.

The Job runs the operator's own image in the stack's namespace, on the model's own pool (so the
same residency rules place it), reads the dataset from the in-country store named by
``evaluation.dataset`` with that store's credentials (by Secret reference), asks the candidate
through the candidate's own Service (``<model>-<revision>``) and each judge through the judge
model's logical Service, and writes its report to the termination message, where the reconciler
reads the verdict (``services.rollout``). It runs once (``backoffLimit: 0``; a verdict is not
retried) for at most ``evaluation.timeoutSeconds``.

Pure; called by ``render.inference`` for models with ``evaluation``.
"""

from __future__ import annotations

import json
from typing import Any

from sovereign.api import ModelSpec, SovereignStack
from sovereign.render import names, pod, storage
from sovereign.render.facts import ClusterFacts
from sovereign.render.loader import RESTRICTED, RUN_AS, TERMINATION_LOG
from sovereign.render.names import Component
from sovereign.render.nodepool import placement

# The environment ``sovereign evaluate`` reads (cli/evaluate.py); builders may not import the CLI,
# tests/unit/render/test_render_rollout.py parses the rendered container with the real command.
EVAL_S3_ENDPOINT = "SOVEREIGN_S3_ENDPOINT"
EVAL_S3_REGION = "SOVEREIGN_S3_REGION"
EVAL_S3_PATH_STYLE = "SOVEREIGN_S3_PATH_STYLE"
EVAL_BUCKET = "SOVEREIGN_EVAL_BUCKET"
EVAL_SPEC = "SOVEREIGN_EVAL_SPEC"
EVAL_MODEL = "SOVEREIGN_EVAL_MODEL"
EVAL_ENDPOINT = "SOVEREIGN_EVAL_ENDPOINT"
EVAL_JUDGES = "SOVEREIGN_EVAL_JUDGES"
EVAL_REPORT = "SOVEREIGN_EVAL_REPORT"
#: What one evaluation container asks for: it waits on HTTP answers, one at a time.
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


def evaluation_job(*, stack: SovereignStack, model: ModelSpec, revision: str, facts: ClusterFacts) -> dict[str, Any]:
    """The Job evaluating ``revision`` of ``model`` (which has ``evaluation``)."""
    evaluation = model.evaluation
    assert evaluation is not None, "only models with evaluation are evaluated"
    namespace = names.stack_namespace(stack)
    store = next(s for s in stack.spec.data_stores if s.name == evaluation.dataset.data_store)
    s3 = store.s3
    assert s3 is not None, "api validation requires an S3 store for the dataset"
    pool = next(p for p in stack.spec.node_pools if p.name == model.node_pool)
    candidate = names.revision_name(model=model.name, revision=revision)
    judges = sorted({s.judge.model for s in evaluation.scorers if s.judge is not None})
    env = [
        pod.value(EVAL_S3_REGION, s3.region),
        pod.value(EVAL_S3_PATH_STYLE, "true" if s3.force_path_style else "false"),
        pod.value(EVAL_BUCKET, s3.bucket),
        pod.value(EVAL_SPEC, json.dumps(evaluation.model_dump(mode="json", by_alias=True), sort_keys=True)),
        pod.value(EVAL_MODEL, model.model),
        pod.value(EVAL_ENDPOINT, names.model_endpoint(namespace=namespace, model=candidate)),
        pod.value(EVAL_REPORT, TERMINATION_LOG),
        *storage.credentials_env(store),
    ]
    if s3.endpoint:
        env.append(pod.value(EVAL_S3_ENDPOINT, s3.endpoint))
    if judges:
        env.append(pod.value(EVAL_JUDGES, ",".join(
            f"{judge}={names.model_endpoint(namespace=namespace, model=judge)}" for judge in judges)))
    labels = {**names.labels(stack, component=Component.EVALUATION, name=model.name), names.REVISION_LABEL: revision}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "affinity": pod.node_affinity(regions=stack.spec.residency.regions, also=placement(stack, pool)),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "evaluate",
            "image": facts.operator_image,
            "command": ["sovereign", "evaluate"],
            "env": pod.sorted_env(env),
            "resources": RESOURCES,
            "securityContext": RESTRICTED,
            # A run that died before writing its report leaves the end of its log instead.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
    }
    if pool.gpu is not None:
        pod_spec["tolerations"] = [{"key": names.GPU_TAINT["key"], "operator": "Exists",
                                    "effect": names.GPU_TAINT["effect"]}]
    metadata = names.metadata(stack, name=names.evaluation_job_name(model=model.name, revision=revision),
                              component=Component.EVALUATION, entry=model.name,
                              annotations={names.MODEL_ID_ANNOTATION: model.model})
    metadata["labels"][names.REVISION_LABEL] = revision
    return names.stamped({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": evaluation.timeout_seconds,
            "template": {"metadata": {"labels": labels, "annotations": {names.MODEL_ID_ANNOTATION: model.model}},
                         "spec": pod_spec},
        },
    })
