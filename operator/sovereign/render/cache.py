"""Model caches: where a model's weights are kept once copied from its S3 store (``cache.layout``).

``SharedVolume``: one ReadWriteMany claim per model and source, ``<model>-cache-<digest>``, and a
Job of the same name that fills it (``sovereign fetch-model`` into the claim, its report in the
pod's termination message). Every replica mounts the claim read-only, so a new replica or a
rollout copies nothing. The digest covers the source (store, bucket, endpoint, path) and the
claim's class and size, which a bound claim cannot change: a new source is a new cache, filled
while the running replicas keep the old one; ``render.inference`` leaves the Deployment out
until the new cache is filled (``cache_filled``), and ``services.reconcile`` leaves the live
Deployment as it is meanwhile. The Job is run once: a Job's pod template cannot change, and a
filled cache needs no second run (``services.reconcile`` never re-applies a Job that exists).

The claim follows the deletion policy of the store the weights come from, as volume stores'
claims do (``render.storage``): with ``Retain`` (the default) it has no ownerReference and
outlives the stack, and a stack created again over it finds it filled (its new Job verifies
the files against the bucket and downloads nothing). A cache superseded by a new source is
pruned whatever the policy: it is a copy of data still in the bucket, and Kubernetes keeps a
claim until the last pod using it is gone, so the old replicas keep reading it until the rollout.

``PerNode``: a directory on each node, ``/var/lib/sovereign-stack/models/<namespace>/<stack>/<cache>``,
mounted by every replica on that node; the replica's loader init container fills it, and one
finding it verified (the loader's manifest) copies nothing; two replicas starting on one node
take turns (the loader's lock file).

Pure; called by ``render.stack`` (the claim and Job) and ``render.inference`` (the volumes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sovereign.api import CacheLayout, DataStore, DeletionPolicy, ModelSpec, SovereignStack
from sovereign.api.models import COPY_BASE_SECONDS
from sovereign.render import loader, names, pod
from sovereign.render.deadlines import model_windows
from sovereign.render.facts import ClusterFacts, FillState
from sovereign.render.names import Component
from sovereign.render.nodepool import placement

#: Where PerNode caches live on a node's disk.
NODE_CACHE_ROOT = "/var/lib/sovereign-stack/models"
#: Attempts of a loader Job before it is Failed: the loader resumes where the last one stopped,
#: so retries cost only what was not yet copied.
FILL_BACKOFF_LIMIT = 6


def _store(stack: SovereignStack, name: str) -> DataStore:
    return next(store for store in stack.spec.data_stores if store.name == name)


def has_s3_source(*, stack: SovereignStack, model: ModelSpec) -> bool:
    return _store(stack, model.source.data_store).s3 is not None


def copies_to_cache(*, stack: SovereignStack, model: ModelSpec) -> bool:
    """Whether the model's weights are copied from an S3 store into a cache the replicas share
    (SharedVolume or PerNode)."""
    return model.cache.layout is not CacheLayout.PER_REPLICA and has_s3_source(stack=stack, model=model)


def cache_name(*, stack: SovereignStack, model: ModelSpec) -> str:
    """Name of the model's current cache (claim and Job, or node directory)."""
    store = _store(stack, model.source.data_store)
    s3 = store.s3
    assert s3 is not None, "only weights from an S3 store are cached"
    source = {"store": store.name, "bucket": s3.bucket, "endpoint": s3.endpoint or "", "region": s3.region,
              "path": model.source.path, "class": model.cache.storage_class_name or "", "size": model.cache.size,
              "layout": model.cache.layout.value}
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()
    return names.model_cache_name(model=model.name, digest=digest)


def cache_filled(*, stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> bool:
    """Whether replicas may start: always, except for a SharedVolume cache observed not filled."""
    if model.cache.layout is not CacheLayout.SHARED_VOLUME or facts.caches is None:
        return True
    fill = facts.caches.get(model.name)
    return fill is not None and fill.name == cache_name(stack=stack, model=model) and fill.state is FillState.FILLED


def render_model_cache(*, stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> list[dict[str, Any]]:
    """The claim and the loader Job of a SharedVolume cache; nothing for other layouts, or while
    the model is held back (a store failing its checks, a class that cannot share)."""
    if (model.cache.layout is not CacheLayout.SHARED_VOLUME or not copies_to_cache(stack=stack, model=model)
            or model.name in facts.held_back):
        return []
    return [_claim(stack, model), _job(stack, model, facts)]


def _claim(stack: SovereignStack, model: ModelSpec) -> dict[str, Any]:
    policy = _store(stack, model.source.data_store).deletion_policy
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"]}
    if model.cache.storage_class_name is not None:
        spec["storageClassName"] = model.cache.storage_class_name
    spec["resources"] = {"requests": {"storage": model.cache.size}}
    return names.stamped({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": names.metadata(
            stack, name=cache_name(stack=stack, model=model), component=Component.MODEL_CACHE, entry=model.name,
            owned=policy is DeletionPolicy.DELETE,
            annotations={names.DELETION_POLICY_ANNOTATION: policy.value, names.MODEL_ID_ANNOTATION: model.model},
        ),
        "spec": spec,
    })


def _job(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> dict[str, Any]:
    name = cache_name(stack=stack, model=model)
    pool = next(p for p in stack.spec.node_pools if p.name == model.node_pool)
    store = _store(stack, model.source.data_store)
    pod_spec: dict[str, Any] = {
        # The model's own nodes: the claim is mounted where its replicas will run, and a
        # cluster that provisions them for the pool (Karpenter) starts one for the fill too.
        "affinity": pod.node_affinity(regions=stack.spec.residency.regions, also=placement(stack, pool)),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        # fsGroup: a fresh claim is root-owned; the loader is not root.
        "securityContext": {"runAsNonRoot": True, "runAsUser": loader.RUN_AS, "runAsGroup": loader.RUN_AS,
                            "fsGroup": loader.RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if pool.gpu is not None:
        pod_spec["tolerations"] = [{"key": names.GPU_TAINT["key"], "operator": "Exists",
                                    "effect": names.GPU_TAINT["effect"]}]
    pod_spec["containers"] = [{**loader.loader(stack=stack, model=model, store=store, facts=facts, report=True),
                               "securityContext": loader.RESTRICTED}]
    pod_spec["volumes"] = [{"name": "weights", "persistentVolumeClaim": {"claimName": name}}]
    labels = names.labels(stack, component=Component.MODEL_CACHE, name=model.name)
    return names.stamped({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": names.metadata(stack, name=name, component=Component.MODEL_CACHE, entry=model.name,
                                   annotations={names.MODEL_ID_ANNOTATION: model.model}),
        "spec": {
            "backoffLimit": FILL_BACKOFF_LIMIT,
            # The copy's window from the weights' size (render.deadlines); a retried loader
            # resumes where the last one stopped, so retries add their start, not another copy.
            "activeDeadlineSeconds": (model_windows(stack=stack, model=model).copy_seconds
                                      + FILL_BACKOFF_LIMIT * COPY_BASE_SECONDS),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    })


def cache_volume(*, stack: SovereignStack, model: ModelSpec) -> dict[str, Any]:
    """The pod volume ``weights`` of a replica whose weights are in a cache (SharedVolume, PerNode)."""
    name = cache_name(stack=stack, model=model)
    if model.cache.layout is CacheLayout.SHARED_VOLUME:
        return {"name": "weights", "persistentVolumeClaim": {"claimName": name, "readOnly": True}}
    path = f"{NODE_CACHE_ROOT}/{names.stack_namespace(stack)}/{names.stack_name(stack)}/{name}"
    return {"name": "weights", "hostPath": {"path": path, "type": "DirectoryOrCreate"}}
