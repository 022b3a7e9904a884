"""Model caches as a user gets them (``cache.layout``): the shared claim and its loader Job, replicas
that mount it read-only and wait for it, a new cache for a new source, node directories; and vLLM
streaming from the bucket (``loadFormat: RunaiStreamer``) with nothing copied."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest
from render_inputs import UID, sample_document, stack_from  # next to this file

from sovereign.cli.fetch_model import command as fetch_model
from sovereign.render import names
from sovereign.render.cache import cache_name
from sovereign.render.facts import CacheFill, ClusterFacts, FillState, Hold
from sovereign.render.inference import render_model, waiting_for_cache
from sovereign.render.stack import render_stack
from sovereign.render.status import Observation, compute_status


def _stack(sample: str, model: str, **cache):
    document = sample_document(sample)
    entry = next(m for m in document["spec"]["models"] if m["name"] == model)
    entry["cache"] = {key: value for key, value in {**entry.get("cache", {}), **cache}.items() if value is not None}
    return stack_from(document)


def _model(stack, name):
    return next(m for m in stack.spec.models if m.name == name)


def _objects(stack, facts, name):
    return {obj["kind"]: obj for obj in render_model(stack=stack, model=_model(stack, name), facts=facts)}


def _filled(stack, name, facts, **report):
    fill = CacheFill(name=cache_name(stack=stack, model=_model(stack, name)), state=FillState.FILLED,
                     completed=datetime(2026, 11, 30, 12, 0, tzinfo=UTC), report=report)
    return ClusterFacts(nodes=facts.nodes, operator_image=facts.operator_image, caches={name: fill})


# --- SharedVolume ---------------------------------------------------------------------------------


def test_a_shared_cache_is_one_read_write_many_claim_filled_by_a_loader_job(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume", storageClassName="regional-files")
    objects = _objects(stack, facts, "chat")
    claim, job = objects["PersistentVolumeClaim"], objects["Job"]
    name = cache_name(stack=stack, model=_model(stack, "chat"))

    assert name.startswith("chat-cache-") and claim["metadata"]["name"] == job["metadata"]["name"] == name
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "regional-files",
                             "resources": {"requests": {"storage": "300Gi"}}}
    (loader,) = job["spec"]["template"]["spec"]["containers"]
    assert loader["command"] == ["sovereign", "fetch-model"]
    assert job["spec"]["template"]["spec"]["volumes"] == [{"name": "weights",
                                                          "persistentVolumeClaim": {"claimName": name}}]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_loader_jobs_deadline_grows_with_the_weights_and_the_shared_replicas_do_not_copy(facts) -> None:
    """300Gi at the default 50Mi/s: 120 s + 6,144 s for the copy, and each of the 6 retries (a
    resumed copy) its start; the replicas' rollout only loads, 600 s + 6,144 s."""
    stack = _stack("full", "chat", layout="SharedVolume", storageClassName="regional-files")
    job = _objects(stack, facts, "chat")["Job"]
    assert job["spec"]["activeDeadlineSeconds"] == 120 + 300 * 1024 // 50 + 6 * 120
    (loader,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "SOVEREIGN_FETCH_FSYNC", "value": "true"} in loader["env"], \
        "a cache other nodes read is flushed before its manifest vouches for it"

    filled = _filled(stack, "chat", facts, files=3)
    deployment = _objects(stack, filled, "chat")["Deployment"]
    assert deployment["spec"]["progressDeadlineSeconds"] == 3600, "startupTimeoutSeconds alone"


def test_the_loader_job_runs_where_the_replicas_run_inside_the_regions(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    objects = _objects(stack, facts, "chat")
    job_pod = objects["Job"]["spec"]["template"]["spec"]

    # No Deployment yet in an offline render? An offline render knows no caches: it shows it.
    replica_pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert job_pod["affinity"] == replica_pod["affinity"]
    terms = job_pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]} in (
        terms[0]["matchExpressions"])
    assert job_pod["tolerations"] == replica_pod["tolerations"], "a GPU pool's nodes are tainted"
    assert job_pod["automountServiceAccountToken"] is False


def test_the_loader_job_reports_to_its_termination_message_which_fetch_model_writes(facts, monkeypatch) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    (loader,) = _objects(stack, facts, "chat")["Job"]["spec"]["template"]["spec"]["containers"]
    for variable in loader["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    context = fetch_model.make_context("fetch-model", list(loader["args"]))

    assert str(context.params["report_file"]) == "/dev/termination-log"
    assert str(context.params["dest"]) == "/models/chat"
    assert loader["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_replicas_mount_the_shared_cache_read_only_and_copy_nothing(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    pod = _objects(stack, _filled(stack, "chat", facts), "chat")["Deployment"]["spec"]["template"]["spec"]

    assert "initContainers" not in pod
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights == {"name": "weights", "persistentVolumeClaim": {
        "claimName": cache_name(stack=stack, model=_model(stack, "chat")), "readOnly": True}}
    (vllm,) = pod["containers"]
    assert vllm["args"][0] == "/models/chat"


def test_no_deployment_while_the_cache_fills_and_the_live_one_is_kept(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    filling = ClusterFacts(nodes=facts.nodes, operator_image=facts.operator_image, caches={
        "chat": CacheFill(name=cache_name(stack=stack, model=_model(stack, "chat")), state=FillState.FILLING)})

    kinds = [obj["kind"] for obj in render_model(stack=stack, model=_model(stack, "chat"), facts=filling)]
    assert "Deployment" not in kinds and {"PersistentVolumeClaim", "Job", "Service"} <= set(kinds)
    assert waiting_for_cache(stack=stack, facts=filling) == ["chat"]
    assert waiting_for_cache(stack=stack, facts=_filled(stack, "chat", facts)) == []


def test_a_new_source_is_a_new_cache_and_waits_for_it(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    document = sample_document("full")
    chat = document["spec"]["models"][0]
    chat["cache"] = {**chat.get("cache", {}), "layout": "SharedVolume"}
    chat["source"]["path"] = "models/qwen2.5-72b-instruct-v2/"
    moved = stack_from(document)
    old_facts = _filled(stack, "chat", facts)

    assert cache_name(stack=moved, model=_model(moved, "chat")) != cache_name(stack=stack, model=_model(stack, "chat"))
    kinds = {obj["kind"] for obj in render_model(stack=moved, model=_model(moved, "chat"), facts=old_facts)}
    assert "Deployment" not in kinds, "the old cache being filled is not the new source's"


def test_the_cache_claim_follows_the_source_stores_deletion_policy(facts) -> None:
    retained = _objects(_stack("full", "chat", layout="SharedVolume"), facts, "chat")["PersistentVolumeClaim"]
    document = sample_document("full")
    document["spec"]["dataStores"][0]["deletionPolicy"] = "Delete"
    document["spec"]["models"][0]["cache"]["layout"] = "SharedVolume"
    deleted = _objects(stack_from(document), facts, "chat")["PersistentVolumeClaim"]

    assert "ownerReferences" not in retained["metadata"]
    assert retained["metadata"]["annotations"][names.DELETION_POLICY_ANNOTATION] == "Retain"
    assert deleted["metadata"]["ownerReferences"][0]["uid"] == UID
    assert deleted["metadata"]["annotations"][names.DELETION_POLICY_ANNOTATION] == "Delete"


def test_a_held_back_model_has_no_cache_and_no_replica(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    held = ClusterFacts(nodes=facts.nodes, operator_image=facts.operator_image, caches={},
                        held_back={"chat": Hold("CacheStorageClassNotReadWriteMany", "no RWX")})
    objects = _objects(stack, held, "chat")

    assert "Job" not in objects and "PersistentVolumeClaim" not in objects
    assert objects["Deployment"]["spec"]["replicas"] == 0


def test_a_cpu_model_shares_its_cache_too(facts) -> None:
    stack = _stack("cpu", "chat", layout="SharedVolume", storageClassName="shared")
    objects = _objects(stack, _filled(stack, "chat", facts), "chat")
    pod = objects["Deployment"]["spec"]["template"]["spec"]

    assert "initContainers" not in pod
    (server,) = pod["containers"]
    assert {"name": "weights", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    assert server["args"][server["args"].index("--model") + 1] == "/models/chat/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    job_pod = objects["Job"]["spec"]["template"]["spec"]
    assert job_pod["securityContext"]["runAsNonRoot"] is True and "tolerations" not in job_pod


def test_the_stack_renders_the_cache_before_the_deployment(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    kinds = [(obj["kind"], obj["metadata"]["name"]) for obj in render_stack(stack, facts)]
    name = cache_name(stack=stack, model=_model(stack, "chat"))

    assert kinds.index(("Job", name)) < kinds.index(("Deployment", "chat"))
    assert render_stack(stack, facts) == render_stack(copy.deepcopy(stack), facts), "deterministic"


# --- status ---------------------------------------------------------------------------------------


def _status(stack, facts):
    return compute_status(stack=stack, facts=facts, observation=Observation(children={}), previous=None,
                          now=datetime(2026, 11, 30, 12, 0, tzinfo=UTC))


def test_status_says_the_cache_is_filling_and_models_are_not_ready(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    name = cache_name(stack=stack, model=_model(stack, "chat"))
    filling = ClusterFacts(nodes=facts.nodes, caches={"chat": CacheFill(
        name=name, state=FillState.FILLING, message=f"loader Job {name} running")})
    status = _status(stack, filling)

    models = next(c for c in status.conditions if c.type == "ModelsReady")
    assert (models.status, models.reason) == ("False", "CacheFilling")
    assert f"chat: cache {name} filling: loader Job {name} running" in models.message
    chat = next(m for m in status.models if m.name == "chat")
    assert chat.cache.state == "Filling" and chat.cache.layout == "SharedVolume"


def test_status_shows_what_the_filled_cache_holds(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    status = _status(stack, _filled(stack, "chat", facts, files=37, bytes=145_000_000_000, downloadedBytes=0,
                                    verified=True, source="s3://qa-corpus/models/qwen2.5-72b-instruct/"))
    cache = next(m for m in status.models if m.name == "chat").cache.model_dump(mode="json", by_alias=True)

    name = cache_name(stack=stack, model=_model(stack, "chat"))
    assert cache == {"layout": "SharedVolume", "name": name, "state": "Filled",
                     "files": 37, "bytes": 145_000_000_000, "downloadedBytes": 0, "verified": True,
                     "filledAt": "2026-11-30T12:00:00Z",
                     "message": "37 file(s), 145000000000 bytes from s3://qa-corpus/models/qwen2.5-72b-instruct/"}


def test_a_failed_fill_stalls_the_stack_and_says_how_to_retry(facts) -> None:
    stack = _stack("full", "chat", layout="SharedVolume")
    name = cache_name(stack=stack, model=_model(stack, "chat"))
    failed = ClusterFacts(nodes=facts.nodes, caches={"chat": CacheFill(
        name=name, state=FillState.FAILED, message=f"loader Job {name} failed (BackoffLimitExceeded): corrupt")})
    status = _status(stack, failed)
    conditions = {c.type: c for c in status.conditions}

    assert conditions["ModelsReady"].reason == "CacheFillFailed"
    assert f"delete Job {name} to fill it again" in conditions["ModelsReady"].message
    assert conditions["Stalled"].status == "True"


# --- PerNode --------------------------------------------------------------------------------------


def test_a_node_cache_is_a_node_directory_the_loader_fills_when_absent(facts) -> None:
    stack = _stack("full", "chat", layout="PerNode", storageClassName=None)
    objects = _objects(stack, facts, "chat")
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    name = cache_name(stack=stack, model=_model(stack, "chat"))

    assert "Job" not in objects and "PersistentVolumeClaim" not in objects
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["hostPath"] == {"path": f"/var/lib/sovereign-stack/models/gov-qa/citizen-services/{name}",
                                   "type": "DirectoryOrCreate"}
    owner, loader = pod["initContainers"]
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert loader["command"] == ["sovereign", "fetch-model"]
    assert loader["volumeMounts"] == owner["volumeMounts"] == [{"name": "weights", "mountPath": "/models"}]


# --- RunaiStreamer --------------------------------------------------------------------------------


def _streamed(facts, **store):
    document = sample_document("full")
    document["spec"]["models"][0]["loadFormat"] = "RunaiStreamer"
    document["spec"]["dataStores"][0]["s3"].update(store)
    stack = stack_from(document)
    return stack, _objects(stack, facts, "chat")["Deployment"]["spec"]["template"]["spec"]


def test_a_streamed_model_is_served_from_the_bucket_with_no_copy(facts) -> None:
    _, pod = _streamed(facts)
    (vllm,) = pod["containers"]
    args = vllm["args"]

    assert "initContainers" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]
    assert all(m["name"] != "weights" for m in vllm["volumeMounts"])
    assert args[0] == "s3://qa-corpus/models/qwen2.5-72b-instruct"
    assert args[args.index("--load-format") + 1] == "runai_streamer"
    assert json.loads(args[args.index("--model-loader-extra-config") + 1]) == {"concurrency": 16}
    assert args[args.index("--served-model-name") + 1] == "chat"


def test_the_streamer_gets_the_stores_endpoint_and_credentials_by_reference(facts) -> None:
    _, pod = _streamed(facts)
    (vllm,) = pod["containers"]
    env = {v["name"]: v.get("value", v.get("valueFrom")) for v in vllm["env"]}

    assert env["AWS_ENDPOINT_URL"] == env["RUNAI_STREAMER_S3_ENDPOINT"] == "https://s3.gov.qa"
    assert env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0", "the sample store is path-style"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "me-central-1"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert [v["name"] for v in vllm["env"]] == sorted(env)


def test_a_virtual_hosted_store_streams_without_the_path_style_switch(facts) -> None:
    _, pod = _streamed(facts, forcePathStyle=False)
    (vllm,) = pod["containers"]

    assert "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING" not in {v["name"] for v in vllm["env"]}


@pytest.mark.parametrize("held", [False, True])
def test_a_streamed_model_keeps_the_residency_hold(facts, held) -> None:
    document = sample_document("full")
    document["spec"]["models"][0]["loadFormat"] = "RunaiStreamer"
    stack = stack_from(document)
    holds = {"chat": Hold("LocationOutsideRegions", "bucket outside")} if held else {}
    deployment = _objects(stack, ClusterFacts(nodes=facts.nodes, held_back=holds), "chat")["Deployment"]

    # The sample's chat autoscales: the autoscaler owns replicas, except that a hold sets 0.
    assert deployment["spec"].get("replicas") == (0 if held else None)
