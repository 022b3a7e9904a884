"""Shared model caches in a reconcile pass: the cluster's StorageClasses decide whether a cache can
be had, the loader Job and its pods say how far it is, and the plan keeps the replicas serving
while a new cache fills, never re-runs a loader Job, and drops a superseded cache."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sovereign.api import load_documents, parse_stack
from sovereign.policy.model_cache import check_cache
from sovereign.render.cache import cache_name
from sovereign.render.facts import CacheFill, ClusterFacts, FillState
from sovereign.render.names import ObjectKey, object_key
from sovereign.services.model_cache import fill_of, with_cache_checks, with_progress
from sovereign.services.reconcile import desired_objects, plan_changes, kept_as_is

SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "full.yaml"
DEFAULT = "storageclass.kubernetes.io/is-default-class"


def _stack(**cache):
    (document,) = load_documents(SAMPLE.read_text())
    document["metadata"] |= {"namespace": "gov-qa", "uid": "uid-1", "generation": 1}
    document["spec"]["models"][0]["cache"] = {"size": "300Gi", **cache}
    return parse_stack(document)


def _class(name, provisioner, **annotations):
    return {"metadata": {"name": name, "annotations": annotations}, "provisioner": provisioner}


# --- can the cluster provide it -----------------------------------------------------------------


def test_a_known_read_write_many_provisioner_gives_a_shared_cache() -> None:
    stack = _stack(layout="SharedVolume", storageClassName="files")
    decision = check_cache(model=stack.spec.models[0], field="spec.models[0].cache",
                           storage_classes={"files": _class("files", "efs.csi.aws.com")})

    assert decision.ok, decision.message


def test_a_block_storage_class_is_refused_naming_the_field_and_the_ways_out() -> None:
    stack = _stack(layout="SharedVolume", storageClassName="regional-ssd")
    decision = check_cache(model=stack.spec.models[0], field="spec.models[0].cache",
                           storage_classes={"regional-ssd": _class("regional-ssd", "ebs.csi.aws.com")})

    assert not decision.ok and decision.reason == "CacheStorageClassNotReadWriteMany"
    assert decision.message.startswith("spec.models[0].cache.layout SharedVolume needs a ReadWriteMany volume")
    assert "ebs.csi.aws.com" in decision.message and "layout: PerNode" in decision.message
    assert "sovereign.ai/access-modes=ReadWriteMany" in decision.message


def test_an_admin_vouches_for_a_class_by_annotation_and_the_default_class_is_used_when_none_is_named() -> None:
    stack = _stack(layout="SharedVolume")
    annotations = {DEFAULT: "true", "sovereign.ai/access-modes": "ReadWriteOnce,ReadWriteMany"}
    classes = {"local": _class("local", "sovereign.ai/dev-hostpath", **annotations)}

    assert check_cache(model=stack.spec.models[0], field="spec.models[0].cache", storage_classes=classes).ok


def test_a_missing_class_is_named_with_the_classes_there_are() -> None:
    stack = _stack(layout="SharedVolume", storageClassName="nfs")
    decision = check_cache(model=stack.spec.models[0], field="spec.models[0].cache",
                           storage_classes={"gp3": _class("gp3", "ebs.csi.aws.com")})

    assert decision.reason == "CacheStorageClassMissing"
    assert "spec.models[0].cache.storageClassName: StorageClass 'nfs' does not exist (classes: gp3)" in decision.message


def test_a_cache_the_cluster_cannot_provide_holds_the_model_back() -> None:
    stack = _stack(layout="SharedVolume", storageClassName="regional-ssd")
    facts = with_cache_checks(ClusterFacts(storage_classes={"regional-ssd": _class("regional-ssd", "ebs.csi.aws.com")}),
                              stack=stack)

    assert facts.held_back["chat"].reason == "CacheStorageClassNotReadWriteMany"
    assert "embed" not in facts.held_back, "a PerReplica model needs no shared class"
    assert with_cache_checks(ClusterFacts(), stack=stack).held_back == {}, "unknown classes: nothing checked"


# --- how far is it ------------------------------------------------------------------------------


def _job(name, **status):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "status": status}


def _pod(job, *, exit_code, message, created="2026-11-30T12:00:00Z"):
    return {"metadata": {"name": f"{job}-x", "labels": {"job-name": job}, "creationTimestamp": created},
            "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": exit_code, "message": message}}}]}}


def test_a_completed_job_is_a_filled_cache_with_the_loaders_report() -> None:
    report = {"files": 3, "bytes": 1024, "downloadedBytes": 1024, "verified": True, "source": "s3://b/p/"}
    job = _job("chat-cache-1", succeeded=1, startTime="2026-11-30T12:00:00Z", completionTime="2026-11-30T12:01:00Z",
               conditions=[{"type": "Complete", "status": "True"}])
    fill = fill_of(name="chat-cache-1", job=job, pods=[
        _pod("chat-cache-1", exit_code=1, message="boom", created="2026-11-30T12:00:00Z"),
        _pod("chat-cache-1", exit_code=0, message=json.dumps(report), created="2026-11-30T12:00:30Z"),
        _pod("other-cache-2", exit_code=0, message="{}")])

    assert fill.state is FillState.FILLED and fill.report == report
    assert fill.completed.isoformat() == "2026-11-30T12:01:00+00:00"


def test_a_running_job_is_filling_and_counts_its_attempts() -> None:
    fill = fill_of(name="c", job=_job("c", active=1, failed=2), pods=[])

    assert fill.state is FillState.FILLING and fill.message == "loader Job c running, attempt 3"
    assert fill_of(name="c", job=None, pods=[]).message == "loader Job c is being created"


def test_a_failed_job_says_why_with_the_loaders_last_words() -> None:
    job = _job("c", failed=7, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                           "message": "Job has reached the specified backoff limit"}])
    log = "2026 INFO fetching\n2026 ERROR s3://b/p/: 3 objects do not match their ETag\n"
    fill = fill_of(name="c", job=job, pods=[_pod("c", exit_code=1, message=log)])

    assert fill.state is FillState.FAILED
    assert fill.message == ("loader Job c failed (Job has reached the specified backoff limit): "
                            "2026 ERROR s3://b/p/: 3 objects do not match their ETag")


# --- the plan -----------------------------------------------------------------------------------


def _live(objects):
    return {object_key(obj): {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "uid": "u"}} for obj in objects}


def test_while_a_new_cache_fills_the_live_deployment_stays_and_the_old_cache_goes() -> None:
    old = _stack(layout="SharedVolume")
    old_name = cache_name(stack=old, model=old.spec.models[0])
    filled = ClusterFacts(caches={"chat": CacheFill(name=old_name, state=FillState.FILLED)})
    live = _live(desired_objects(old, filled))
    new = _stack(layout="SharedVolume", size="400Gi")
    new_name = cache_name(stack=new, model=new.spec.models[0])
    filling = ClusterFacts(caches={"chat": CacheFill(name=new_name, state=FillState.FILLING)})

    plan = plan_changes(desired=desired_objects(new, filling), observed=live,
                        keep=kept_as_is(stack=new, facts=filling, observed=live))
    applied = {(o["kind"], o["metadata"]["name"]) for o in plan.apply}
    pruned = {(o["kind"], o["metadata"]["name"]) for o in plan.prune}

    assert {("PersistentVolumeClaim", new_name), ("Job", new_name)} <= applied
    assert ("Deployment", "chat") not in applied | pruned, "the replicas keep serving from the old cache"
    assert pruned == {("Job", old_name)}, "the old claim stays while the live Deployment mounts it"


def test_a_superseded_cache_goes_once_the_deployment_moved_even_under_retain() -> None:
    old = _stack(layout="SharedVolume")
    old_name = cache_name(stack=old, model=old.spec.models[0])
    live = _live(desired_objects(old, ClusterFacts(caches={"chat": CacheFill(name=old_name, state=FillState.FILLED)})))
    new = _stack(layout="SharedVolume", size="400Gi")
    new_name = cache_name(stack=new, model=new.spec.models[0])
    filled = ClusterFacts(caches={"chat": CacheFill(name=new_name, state=FillState.FILLED)})
    desired = desired_objects(new, filled)
    live |= _live([obj for obj in desired if obj["kind"] == "Deployment"])  # the rollout was applied

    plan = plan_changes(desired=desired, observed=live, keep=kept_as_is(stack=new, facts=filled, observed=live))
    pruned = {(o["kind"], o["metadata"]["name"]) for o in plan.prune}

    assert ("PersistentVolumeClaim", old_name) in pruned, (
        "a copy of what is still in the bucket; Kubernetes keeps the claim until its last reader is gone")


def test_an_existing_loader_job_is_never_applied_again() -> None:
    stack = _stack(layout="SharedVolume")
    name = cache_name(stack=stack, model=stack.spec.models[0])
    desired = desired_objects(stack, ClusterFacts(caches={}))
    live = _live(desired)
    job = live[ObjectKey("batch", "Job", "gov-qa", name)]
    job["metadata"]["annotations"] = {}  # as if rendered by another operator release

    plan = plan_changes(desired=desired, observed=live, keep=())
    assert ("Job", name) not in {(o["kind"], o["metadata"]["name"]) for o in plan.apply}


def test_while_a_new_cache_fills_every_live_revision_of_an_evaluated_model_keeps_serving() -> None:
    """With evaluation the model's replicas are Deployments per revision (``<model>-<revision>``):
    none of them may go while the new source's cache fills."""
    sample = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "rollout.yaml"
    (document,) = load_documents(sample.read_text())
    document["metadata"] |= {"namespace": "gov-qa", "uid": "uid-1", "generation": 1}
    document["spec"]["models"][0]["cache"] = {"layout": "SharedVolume", "size": "4Gi"}
    old = parse_stack(copy.deepcopy(document))
    old_name = cache_name(stack=old, model=old.spec.models[0])
    live = _live(desired_objects(old, ClusterFacts(caches={"chat": CacheFill(name=old_name, state=FillState.FILLED)})))
    revisions = {key for key in live if key.kind == "Deployment" and key.name.startswith("chat-")}
    document["spec"]["models"][0]["source"]["path"] = "gguf/qwen2.5-1.5b-instruct-v2.gguf"
    new = parse_stack(document)
    filling = ClusterFacts(caches={"chat": CacheFill(name=cache_name(stack=new, model=new.spec.models[0]),
                                                     state=FillState.FILLING)})

    plan = plan_changes(desired=desired_objects(new, filling), observed=live,
                        keep=kept_as_is(stack=new, facts=filling, observed=live))

    assert revisions, "the evaluated model runs a Deployment per revision"
    assert not revisions & {object_key(o) for o in plan.prune}, "a serving revision was pruned"


def test_a_filling_cache_shows_the_loaders_last_progress_line() -> None:
    log = ("2026-11-30 12:00:01 INFO fetching s3://b/models/q/: 37 files, 145.0 GiB\n"
           "2026-11-30 12:00:11 INFO progress: 1.2 GiB of 145.0 GiB (1%), 128 MB/s, ETA 1140 s\n"
           "2026-11-30 12:00:12 INFO downloaded model-00001.safetensors (3.9 GiB)\n"
           "2026-11-30 12:00:21 INFO progress: 2.4 GiB of 145.0 GiB (2%), 129 MB/s, ETA 1131 s\n")

    assert with_progress(message="loader Job c running", log=log) == (
        "loader Job c running: progress: 2.4 GiB of 145.0 GiB (2%), 129 MB/s, ETA 1131 s")
    assert with_progress(message="loader Job c running", log="2026 INFO fetching s3://b/p/: 1 files\n") == (
        "loader Job c running")
