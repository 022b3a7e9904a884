"""Names, labels and annotations of everything the operator creates, in one place.

Builders name and label children through these helpers; the reconcile service lists, compares
and prunes children through the same ones, and the CLI and tests find them the same way. A
child is "of a stack" when it carries ``sovereign.ai/stack=<stack>``; cluster-scoped children
(Karpenter NodePools) and claimed nodes also carry the ``sovereign.ai/owner`` annotation
(``<namespace>/<stack>``), since a stack name alone is only unique within its namespace; what
selects cluster-scoped things (a claimed node, a NodePool's name) is namespaced the same way
(``sovereign.ai/stack-id=<namespace>.<stack>``), so two teams' stacks called ``prod`` never
select each other's nodes.

Pure: no I/O. Called by every ``render`` module, ``services.reconcile`` and ``cli.render``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple

from sovereign.api import API_VERSION, KIND, SovereignStack

#: Blocks a stack's deletion until its cluster-scoped effects (NodePools, node labels) are gone.
FINALIZER = "sovereign.ai/finalizer"
MANAGED_BY = "sovereign-operator"

STACK_LABEL = "sovereign.ai/stack"
#: ``<namespace>.<stack>`` (hashed to fit a label value): the stack's identity across namespaces.
STACK_ID_LABEL = "sovereign.ai/stack-id"
POOL_LABEL = "sovereign.ai/pool"
SPEC_HASH_ANNOTATION = "sovereign.ai/spec-hash"
OWNER_ANNOTATION = "sovereign.ai/owner"
DELETION_POLICY_ANNOTATION = "sovereign.ai/deletion-policy"
MODEL_ID_ANNOTATION = "sovereign.ai/model"
#: The revision (``policy.rollout.revision``) of a blue/green model's Deployment, its pods and its Job.
REVISION_LABEL = "sovereign.ai/revision"
#: What the logical Service of a blue/green model selects while no revision has passed: no pod.
NO_REVISION = "none"
#: On the logical Service of a blue/green model during a canary (its selector then names no
#: revision, so it selects both): the serving revision, the canary's, and since when (RFC 3339).
SERVING_REVISION_ANNOTATION = "sovereign.ai/serving-revision"
CANARY_REVISION_ANNOTATION = "sovereign.ai/canary-revision"
CANARY_SINCE_ANNOTATION = "sovereign.ai/canary-since"
#: On the logical Service after a canary was aborted: ``<revision>: <why>``, kept until the spec changes.
CANARY_ABORTED_ANNOTATION = "sovereign.ai/canary-aborted"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF = "sovereign-stack"

REGION_LABEL = "topology.kubernetes.io/region"
#: Label of namespaces that hold a stack: residency admission (policies, webhooks) acts only there.
GOVERNED_LABEL = "sovereign.ai/governed"
#: Label of a governed namespace naming its enforcement mode (Enforce or Audit), which chooses the
#: admission policy bindings that apply there.
ENFORCEMENT_LABEL = "sovereign.ai/enforcement"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
KARPENTER_NODEPOOL_LABEL = "karpenter.sh/nodepool"

#: The port every engine listens on and the model's Service exposes.
MODEL_PORT = 8000
MAX_LABEL_VALUE = 63


class Component(StrEnum):
    """What part of the stack an object belongs to (``app.kubernetes.io/component``)."""

    INFERENCE = "inference"
    APPLICATION = "application"
    STORAGE = "storage"
    NODE_POOL = "node-pool"
    NETWORK = "network"
    MODEL_CACHE = "model-cache"
    EVALUATION = "evaluation"


def stack_name(stack: SovereignStack) -> str:
    name = stack.metadata.name
    if not name:
        raise ValueError("the stack has no metadata.name")
    return name


def stack_namespace(stack: SovereignStack) -> str:
    namespace = stack.metadata.namespace
    if not namespace:
        raise ValueError(f"stack {stack.metadata.name!r} has no metadata.namespace")
    return namespace


def owner_id(stack: SovereignStack) -> str:
    """``<namespace>/<stack>``: the value of the owner annotation, unique in the cluster."""
    return f"{stack_namespace(stack)}/{stack_name(stack)}"


def stack_id(stack: SovereignStack) -> str:
    """``<namespace>.<stack>`` as a label value: unique in the cluster (a namespace holds no dot,
    so the first dot splits it), shortened with a digest of the whole when over 63 characters."""
    return _fit_label(f"{stack_namespace(stack)}.{stack_name(stack)}")


def _fit_label(full: str) -> str:
    """``full`` when it fits a label value; else its head and a digest of the whole, so two long
    names that share a head still differ."""
    if len(full) <= MAX_LABEL_VALUE:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_LABEL_VALUE - 9].rstrip('-.')}-{digest}"


def stack_selector(name: str) -> str:
    """The label selector of every child of the stack called ``name``."""
    return f"{STACK_LABEL}={name}"


def nodepool_name(stack: SovereignStack, pool: str) -> str:
    """Name of the Karpenter NodePool of ``pool``: cluster-scoped, so namespace and stack are in
    it; at most 63 characters because Karpenter copies it into the ``karpenter.sh/nodepool``
    label of every node it launches."""
    return _fit_label(f"{stack_namespace(stack)}-{stack_name(stack)}-{pool}")


#: A Job's name is copied into the ``job-name`` label of its pods: at most 63 characters.
_CACHE_PREFIX = MAX_LABEL_VALUE - len("-cache-") - 10


def model_cache_name(*, model: str, digest: str) -> str:
    """Name of a model's shared cache: its claim and the Job filling it, ``<model>-cache-<digest>``
    (the digest of the source, so a new source is a new cache)."""
    return f"{model[:_CACHE_PREFIX].rstrip('-')}-cache-{digest[:10]}"


#: Room for the model's name before ``-<revision>`` (10 hex digits) and ``-eval-<revision>``.
_REVISION_PREFIX = MAX_LABEL_VALUE - 1 - 10
_EVALUATION_PREFIX = MAX_LABEL_VALUE - len("-eval-") - 10


def revision_name(*, model: str, revision: str) -> str:
    """Name of a blue/green model's Deployment (and a candidate's own Service) for one revision."""
    return f"{model[:_REVISION_PREFIX].rstrip('-')}-{revision}"


def selected_revision(service: Mapping[str, Any] | None) -> str | None:
    """The revision a blue/green model's logical Service serves: the one its selector names, or
    during a canary (a selector naming none) the one its annotation records; None for none."""
    selector = ((service or {}).get("spec") or {}).get("selector") or {}
    notes = ((service or {}).get("metadata") or {}).get("annotations") or {}
    selected = selector.get(REVISION_LABEL) or notes.get(SERVING_REVISION_ANNOTATION)
    return None if selected in (None, "", NO_REVISION) else str(selected)


def evaluation_job_name(*, model: str, revision: str) -> str:
    """Name of the Job evaluating one revision of a model (copied into its pods' job-name label)."""
    return f"{model[:_EVALUATION_PREFIX].rstrip('-')}-eval-{revision}"


def network_policy_name(stack: SovereignStack) -> str:
    return f"{stack_name(stack)}-egress"


def model_endpoint(*, namespace: str, model: str) -> str:
    """The OpenAI-compatible base URL of a model's Service inside the cluster."""
    return f"http://{model}.{namespace}.svc:{MODEL_PORT}/v1"


def env_key(name: str) -> str:
    """An entry name as it appears inside an environment variable name (``my-chat`` -> ``MY_CHAT``)."""
    return name.upper().replace("-", "_")


def labels(stack: SovereignStack, *, component: Component, name: str) -> dict[str, str]:
    """The labels of an object the operator creates for the entry ``name`` of the stack."""
    return {
        NAME_LABEL: name,
        INSTANCE_LABEL: stack_name(stack),
        COMPONENT_LABEL: component.value,
        PART_OF_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGED_BY,
        STACK_LABEL: stack_name(stack),
    }


def selector_labels(stack: SovereignStack, *, component: Component, name: str) -> dict[str, str]:
    """The pod selector of a workload: a stable subset of ``labels`` (Deployment selectors are
    immutable, so nothing that may change later belongs here)."""
    return {
        NAME_LABEL: name,
        COMPONENT_LABEL: component.value,
        STACK_LABEL: stack_name(stack),
    }


def owner_reference(stack: SovereignStack) -> dict[str, Any]:
    """The controller ownerReference to the stack; its uid is only known once the stack exists."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": stack_name(stack),
        "uid": stack.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    stack: SovereignStack,
    *,
    name: str,
    component: Component,
    entry: str,
    namespaced: bool = True,
    owned: bool = True,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metadata of a child: name, namespace, labels, annotations and the ownerReference.

    Cluster-scoped children cannot be owned by a namespaced stack; they carry the owner
    annotation instead and are removed by the stack's finalizer. ``owned=False`` leaves the
    ownerReference out for children that must outlive the stack (retained data). Without a
    stack uid (rendering a file offline) there is nothing to reference, so none is written.
    """
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = stack_namespace(stack)
    meta["labels"] = labels(stack, component=component, name=entry)
    notes = dict(annotations or {})
    if not namespaced:
        notes[OWNER_ANNOTATION] = owner_id(stack)
    if notes:
        meta["annotations"] = notes
    if namespaced and owned and stack.metadata.uid:
        meta["ownerReferences"] = [owner_reference(stack)]
    return meta


def spec_hash(obj: Mapping[str, Any]) -> str:
    """A digest of everything in ``obj`` except its own spec-hash annotation and its owner.

    The ownerReference names the stack's uid, which an offline render (``sovereign render``)
    cannot know: leaving it out makes the hash the same online and offline, so a GitOps preview
    shows the very hash the operator applies. It is identity, not desired content.
    """
    meta = dict(obj.get("metadata") or {})
    meta.pop("ownerReferences", None)
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(SPEC_HASH_ANNOTATION, None)
    body = {**obj, "metadata": {**meta, "annotations": annotations}}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def stamped(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the spec-hash annotation set: the live object carries the digest of what was
    applied, so comparing two annotations tells whether an apply is needed."""
    digest = spec_hash(obj)
    meta = obj["metadata"]
    annotations = {**meta.get("annotations", {}), SPEC_HASH_ANNOTATION: digest}
    # Rebuilt rather than updated, so annotations keep their place before ownerReferences.
    order = ("name", "namespace", "labels", "annotations")
    obj["metadata"] = {
        **{key: meta[key] for key in order if key in meta},
        "annotations": annotations,
        **{key: value for key, value in meta.items() if key not in order},
    }
    return obj


class ObjectKey(NamedTuple):
    """The identity of an object: API group, kind, namespace ("" if cluster-scoped) and name."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    api_version = obj["apiVersion"]
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    meta = obj["metadata"]
    return ObjectKey(group, obj["kind"], meta.get("namespace") or "", meta["name"])
