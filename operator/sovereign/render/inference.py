"""Inference: per model, a Deployment of its engine and a Service, a PodDisruptionBudget when it
has several replicas, a KEDA ScaledObject when it autoscales, and the PodMonitor that scrapes its
replicas when the cluster serves the kind (``render.monitoring``).

Engine ``vllm``: the pod serves the weights from a local path under two names, the logical name
first (``--served-model-name chat Qwen/Qwen2.5-72B-Instruct``): applications call the logical
name, so the model behind it can be swapped without touching them; the autoscaler queries its
queue by the ``stack`` and ``model`` labels its scrape target adds (``render.monitoring``). The pod runs with hub access and usage
reporting off, on GPU nodes of the allowed regions and of the model's pool only. It and its
loader request CPU and memory (``resources``, or a size per GPU: ``api.models.VLLM_CPU_PER_GPU``,
``VLLM_MEMORY_PER_GPU_GIB``) beside the GPUs, so it is Burstable, never BestEffort: the kubelet
evicts BestEffort pods first under memory pressure, and GPUs do not count for QoS.

Engine ``llama-cpp``: llama.cpp's ``llama-server`` serves the one GGUF file ``source.path`` names,
under the same two names (``--alias chat,<model>``), on the same port behind the same Service, so
an application cannot tell the engines apart. It runs on CPU nodes of the model's pool with
``resources`` as both requests and limits for every container (Guaranteed QoS; ``--threads``
follows the CPU so the server is not throttled), offline (``LLAMA_ARG_OFFLINE``: llama-server
downloads nothing, from a hub, a URL or a registry), as a non-root user on a read-only root
filesystem, with Prometheus metrics on ``/metrics`` (``--metrics``).

Weights come only from a declared data store. From an S3 store, by ``cache.layout``
(``render.cache``): ``PerReplica``, an init container running the operator's own image
(``sovereign fetch-model``, ``render.loader``) copies ``source.path`` into a per-replica volume
(a generic ephemeral volume sized by ``cache``, for llama-cpp an ``emptyDir`` of that size: it
outlives container restarts, and a rolled pod starts on a fresh one, so two replicas never write
the same files); ``PerNode``, the same loader fills a directory of the node, which a second
replica there finds verified; ``SharedVolume``, the replicas mount the model's shared claim
read-only and copy nothing, and the Deployment is left out until the claim's loader Job has
filled it (``waiting_for_cache``). With ``loadFormat: RunaiStreamer`` vLLM streams the
safetensors from the bucket itself (``vllm serve s3://<bucket>/<path> --load-format
runai_streamer``, the store's endpoint and credentials in the environment): no loader, no
volume. From a volume store, the store's claim is mounted read-only at the same path instead:
nothing to copy.

With ``autoscaling`` the Deployment leaves ``replicas`` out, so server-side apply never claims
the field the autoscaler writes, and the ScaledObject's scale-down stabilization window is the
time a new replica needs to copy and load its weights (``scale_down_window``), so a replica is
never removed while it is still loading (up to the HPA's limit of one hour). A model held back by a failed data store (``facts.held_back``)
gets ``replicas: 0`` and no ScaledObject, which would scale it up again; the rest of its objects
stay, so it starts as soon as the store passes. Pure; called by ``render.stack``.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from sovereign.api import CacheLayout, DataStore, Engine, ModelSpec, SovereignStack, parse_quantity, vllm
from sovereign.api.engines import LLAMA_CPP_IMAGE
from sovereign.api.models import VLLM_CPU_PER_GPU, VLLM_MEMORY_PER_GPU_GIB, LoadFormat
from sovereign.policy import rollout
from sovereign.render import cache, loader, monitoring, names, pod, storage
from sovereign.render.cache import cache_filled, cache_volume, copies_to_cache
from sovereign.render.deadlines import model_windows
from sovereign.render.evaluation import evaluation_job
from sovereign.render.facts import ClusterFacts
from sovereign.render.loader import MODELS_ROOT, RESTRICTED, RUN_AS, weights_path
from sovereign.render.names import Component
from sovereign.render.service import cluster_ip_service
from sovereign.render.nodepool import placement

#: The vLLM image pinned by this operator release; ``spec.models[].image`` overrides it.
DEFAULT_VLLM_IMAGE = vllm.DEFAULT_VLLM_IMAGE
#: Shared memory for NCCL between tensor-parallel workers and for vLLM's input processing.
SHM_PER_GPU_GIB = 4
STARTUP_PERIOD_SECONDS = 10
#: llama-server's probes run every second: a CPU model of a few GB loads in seconds, and each
#: probe period is time between "the server answers" and "the Service sends it requests" (the
#: startup probe's period, then the readiness probe's), which on a small model is most of its
#: start. /health is a cheap in-memory answer, so probing it often costs the server nothing.
LLAMA_CPP_PROBE_PERIOD_SECONDS = 1
#: Failed readiness probes before a llama-server replica stops getting requests (5 seconds).
LLAMA_CPP_READINESS_FAILURES = 5
#: The HPA's scale-down stabilization window: its default, and the most it accepts
#: (``HPAScalingRules.stabilizationWindowSeconds``, 0 to 3600).
HPA_DEFAULT_SCALE_DOWN_SECONDS = 300
HPA_MOST_STABILIZATION_SECONDS = 3600
#: The time of an offline render's rollout decision, which no history depends on.
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)

#: Hub downloads and usage reporting off: weights come only from the declared store, and
#: nothing about the deployment leaves the jurisdiction.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
#: llama-server's own offline switch (``--offline``: no download of any kind, from a hub, a URL or
#: a registry), and the hub and tracking switches every inference pod carries.
LLAMA_CPP_OFFLINE_ENV = {"LLAMA_ARG_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
#: Where llama.cpp's server images keep the server (ENTRYPOINT of the upstream server image).
LLAMA_SERVER = "/app/llama-server"
#: The Run:ai Model Streamer's S3 settings, from its documentation and vLLM's loader (checked
#: 2026-11-30: docs.vllm.ai "Loading models with Run:ai Model Streamer", stable; vLLM's
#: ``model_executor/model_loader/runai_streamer_loader.py``; run-ai/runai-model-streamer
#: ``docs/src/env-vars.md``): the endpoint of an S3-compatible store in
#: ``RUNAI_STREAMER_S3_ENDPOINT`` (vLLM copies ``AWS_ENDPOINT_URL`` into it only when
#: ``--model-loader-extra-config`` is given, so both are set), path-style addressing off virtual
#: hosts with ``RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0``, and the EC2 metadata service off
#: (``AWS_EC2_METADATA_DISABLED``) so the SDK never asks a cloud outside the store for credentials.
STREAMER_ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "RUNAI_STREAMER_S3_ENDPOINT")
STREAMER_VIRTUAL_ADDRESSING_ENV = "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"
STREAMER_METADATA_ENV = "AWS_EC2_METADATA_DISABLED"
#: Readers the streamer runs against the bucket (``--model-loader-extra-config``'s concurrency:
#: "for reading from S3, the number of client instances the host is opening to the S3 server").
STREAMER_CONCURRENCY = 16


def render_model(*, stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> list[dict[str, Any]]:
    """The objects serving one model, in a stable order: its shared cache (claim and loader Job)
    first, then the Deployment (left out, with its ScaledObject, while that cache fills:
    ``waiting_for_cache``), Service, PodDisruptionBudget, ScaledObject and PodMonitor."""
    filled = not _waits_for_cache(stack, model, facts)
    objects = cache.render_model_cache(stack=stack, model=model, facts=facts)
    if model.evaluation is not None:
        return objects + _blue_green(stack, model, facts, filled=filled) + _scrape_targets(stack, model, facts)
    if filled:
        objects.append(_deployment(stack, model, facts))
    objects.append(
        cluster_ip_service(stack=stack, name=model.name, component=Component.INFERENCE, port=names.MODEL_PORT))
    most = model.autoscaling.max_replicas if model.autoscaling else model.replicas
    if most > 1:
        objects.append(_disruption_budget(stack, model))
    if filled and model.autoscaling is not None and model.name not in facts.held_back:
        objects.append(_scaled_object(stack, model, facts))
    return objects + _scrape_targets(stack, model, facts)


def _scrape_targets(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> list[dict[str, Any]]:
    """The model's PodMonitor, where the cluster serves the kind (``render.monitoring``)."""
    return [monitoring.pod_monitor(stack=stack, model=model)] if facts.pod_monitors else []


def waiting_for_cache(*, stack: SovereignStack, facts: ClusterFacts) -> list[str]:
    """The models whose shared cache fills: ``render_model`` leaves their Deployments (every
    revision's, with evaluation) and ScaledObject out, and their live inference objects stay as
    they are: replicas of the previous source keep serving until the new cache is filled, and
    no replica starts before the first one is."""
    return [model.name for model in stack.spec.models if _waits_for_cache(stack, model, facts)]


def _waits_for_cache(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> bool:
    """Whether the model's replicas wait for its shared cache. A held-back model does not: its
    Deployment is rendered with zero replicas, so nothing starts without the cache either."""
    return model.name not in facts.held_back and not cache_filled(stack=stack, model=model, facts=facts)


def gguf_file(model: ModelSpec) -> str:
    """Where a llama-cpp replica finds its GGUF file: the loader copies ``source.path`` (one
    object) into the weights directory under its base name; a volume store's directory holding
    it is mounted there instead."""
    return f"{weights_path(model)}/{model.source.path.rpartition('/')[2]}"


def _store(stack: SovereignStack, name: str) -> DataStore:
    return next(store for store in stack.spec.data_stores if store.name == name)


def model_deployment(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts, *,
                     revision: str, replicas: int | None = None) -> dict[str, Any]:
    """The Deployment of one revision of a blue/green model (``render.rollout``): named
    ``<model>-<revision>``, its pods labelled with the revision, which the Services select;
    ``replicas`` instead of the spec's for a canary's share."""
    return _deployment(stack, model, facts, revision=revision, replicas=replicas)


def _deployment(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts, *,
                revision: str | None = None, replicas: int | None = None) -> dict[str, Any]:
    pool = next(p for p in stack.spec.node_pools if p.name == model.node_pool)
    store = _store(stack, model.source.data_store)
    selector = names.selector_labels(stack, component=Component.INFERENCE, name=model.name)
    template_labels = {**names.labels(stack, component=Component.INFERENCE, name=model.name), names.POOL_LABEL: pool.name}
    if revision is not None:
        selector[names.REVISION_LABEL] = template_labels[names.REVISION_LABEL] = revision
    volume, mount = _weights_volume(stack, model, store)
    if model.engine is Engine.LLAMA_CPP:
        pod_spec = _llama_cpp_pod(stack, model, store, facts, pool_labels=placement(stack, pool),
                                  weights=(volume, mount))
    else:
        pod_spec = _vllm_pod(stack, model, store, facts, pool_labels=placement(stack, pool), weights=(volume, mount))
    spec: dict[str, Any] = {}
    if model.name in facts.held_back:
        spec["replicas"] = 0
    elif model.autoscaling is None:
        spec["replicas"] = model.replicas if replicas is None else replicas
    spec |= {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        # The copy, then the load, each as long as the weights' size needs (render.deadlines).
        "progressDeadlineSeconds": model_windows(stack=stack, model=model).rollout_seconds,
        # The model on the pod too: `kubectl get pod -o yaml` tells which model a replica serves,
        # while a swap of model: rolls the replicas one by one.
        "template": {"metadata": {"labels": template_labels,
                                  "annotations": {names.MODEL_ID_ANNOTATION: model.model}},
                     "spec": pod_spec},
    }
    metadata = names.metadata(
        stack,
        name=model.name if revision is None else names.revision_name(model=model.name, revision=revision),
        component=Component.INFERENCE,
        entry=model.name,
        annotations={names.MODEL_ID_ANNOTATION: model.model},
    )
    if revision is not None:
        metadata["labels"][names.REVISION_LABEL] = revision
    return names.stamped({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec})


def _vllm_pod(stack: SovereignStack, model: ModelSpec, store: DataStore, facts: ClusterFacts, *,
              pool_labels: dict[str, str], weights: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    volume, mount = weights
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{SHM_PER_GPU_GIB * model.gpus}Gi"}}
    pod_spec: dict[str, Any] = {
        "affinity": pod.node_affinity(regions=stack.spec.residency.regions, also=pool_labels),
        "tolerations": [{"key": names.GPU_TAINT["key"], "operator": "Exists", "effect": names.GPU_TAINT["effect"]}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    host = _vllm_host_resources(model)
    gpus = {names.GPU_RESOURCE: str(model.gpus)}
    resources = {"requests": {**host["requests"], **gpus}, "limits": {**host["limits"], **gpus}}
    load = model_windows(stack=stack, model=model).load_seconds
    if model.load_format is LoadFormat.RUNAI_STREAMER:
        # Straight from the bucket into GPU memory: no loader, no weights volume.
        pod_spec["containers"] = [_vllm(model, None, resources, streamed_from=store, load_seconds=load)]
        pod_spec["volumes"] = [shm]
        return pod_spec
    # The loader gets the server's CPU and memory: an init container runs before the server,
    # so the node reserves the larger of the two, not their sum.
    init = _init_containers(stack, model, store, facts, resources=host)
    if init:
        pod_spec["initContainers"] = init
    pod_spec["containers"] = [_vllm(model, mount, resources, load_seconds=load)]
    pod_spec["volumes"] = [volume, shm]
    return pod_spec


def _init_containers(stack: SovereignStack, model: ModelSpec, store: DataStore, facts: ClusterFacts, *,
                     resources: dict[str, Any]) -> list[dict[str, Any]]:
    """What runs before the engine: nothing for a volume store or a shared cache (filled by its
    Job); the loader for a replica's own volume; for a node directory, the loader after a step
    that gives the directory to the loader's user (the kubelet creates it root-owned, and the
    loader is not root)."""
    if store.s3 is None or model.cache.layout is CacheLayout.SHARED_VOLUME:
        return []
    # The loader gets the server's resources (an init container's run before the server's costs
    # the node nothing extra); in a llama-cpp pod (non-root) the server's restrictions too.
    extra: dict[str, Any] = {"resources": resources}
    if model.engine is Engine.LLAMA_CPP:
        extra["securityContext"] = RESTRICTED
    fetch = {**loader.loader(stack=stack, model=model, store=store, facts=facts), **extra}
    if model.cache.layout is not CacheLayout.PER_NODE:
        return [fetch]
    owner = {
        "name": "cache-owner",
        "image": facts.operator_image,
        "command": ["python3", "-c", f"import os; os.chown({MODELS_ROOT!r}, {RUN_AS}, {RUN_AS})"],
        "resources": resources,
        # Root with the one capability chown needs, for this one call on the node directory.
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}},
        "volumeMounts": [{"name": "weights", "mountPath": MODELS_ROOT}],
    }
    return [owner, fetch]


def _llama_cpp_pod(stack: SovereignStack, model: ModelSpec, store: DataStore, facts: ClusterFacts, *,
                   pool_labels: dict[str, str], weights: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """A CPU pod: no GPU toleration, Guaranteed resources, non-root, read-only root filesystem."""
    volume, mount = weights
    resources = _cpu_resources(model)
    pod_spec: dict[str, Any] = {
        "affinity": pod.node_affinity(regions=stack.spec.residency.regions, also=pool_labels),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # fsGroup: the weights volume is created root-owned; the loader, not root, writes to it.
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    init = _init_containers(stack, model, store, facts, resources=resources)
    if init:
        pod_spec["initContainers"] = init
    load = model_windows(stack=stack, model=model).load_seconds
    pod_spec["containers"] = [_llama_server(model, {**mount, "readOnly": True}, resources, load_seconds=load)]
    pod_spec["volumes"] = [volume, {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    return pod_spec


def _cpu_resources(model: ModelSpec) -> dict[str, Any]:
    assert model.resources is not None, "api validation requires resources for llama-cpp models"
    amounts = {"cpu": model.resources.cpu, "memory": model.resources.memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _vllm_host_resources(model: ModelSpec) -> dict[str, Any]:
    """A vLLM replica's CPU and memory: requested, so the pod is Burstable rather than BestEffort
    (GPUs do not count for QoS); memory also capped at the request, so the kubelet never evicts
    the replica for using more than it asked; CPU uncapped, as a CFS quota would throttle vLLM's
    scheduler and tokenizer threads between GPU steps. ``resources`` overrides the per-GPU size."""
    if model.resources is not None:
        cpu, memory = model.resources.cpu, model.resources.memory
    else:
        cpu, memory = str(VLLM_CPU_PER_GPU * model.gpus), f"{VLLM_MEMORY_PER_GPU_GIB * model.gpus}Gi"
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def threads(model: ModelSpec) -> int:
    """llama-server's threads: the whole CPUs of the replica, at least one (more threads than
    the CPU limit allows only wait on each other)."""
    assert model.resources is not None, "api validation requires resources for llama-cpp models"
    return max(1, int(parse_quantity(model.resources.cpu)))


def _llama_server(model: ModelSpec, weights_mount: dict[str, Any], resources: dict[str, Any], *,
                  load_seconds: int) -> dict[str, Any]:
    return {
        "name": "llama-server",
        "image": model.image or LLAMA_CPP_IMAGE,
        "command": [LLAMA_SERVER],
        "args": [
            "--model", gguf_file(model),
            "--alias", f"{model.name},{model.model}",
            "--host", "0.0.0.0",
            "--port", str(names.MODEL_PORT),
            "--metrics",
            # An API server for applications: llama-server's built-in chat page is left out.
            "--no-webui",
            "--threads", str(threads(model)),
            *model.extra_args,
        ],
        "env": pod.sorted_env(pod.value(key, text) for key, text in LLAMA_CPP_OFFLINE_ENV.items()),
        "ports": [{"name": "http", "containerPort": names.MODEL_PORT, "protocol": "TCP"}],
        "resources": resources,
        "securityContext": RESTRICTED,
        # /health answers 503 while the model loads, 200 once it serves: vLLM's probes, on
        # a one-second period for startup and readiness (LLAMA_CPP_PROBE_PERIOD_SECONDS).
        "startupProbe": _health_probe(
            period=LLAMA_CPP_PROBE_PERIOD_SECONDS,
            failures=math.ceil(load_seconds / LLAMA_CPP_PROBE_PERIOD_SECONDS),
        ),
        "readinessProbe": _health_probe(period=LLAMA_CPP_PROBE_PERIOD_SECONDS, failures=LLAMA_CPP_READINESS_FAILURES),
        "livenessProbe": _health_probe(period=10, failures=6),
        "volumeMounts": [weights_mount, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _weights_volume(stack: SovereignStack, model: ModelSpec, store: DataStore) -> tuple[dict[str, Any], dict[str, Any]]:
    if store.volume is not None:
        # A GGUF path names a file: its directory is mounted, so the file has the same path as
        # when the loader copies it.
        directory = model.source.path.rpartition("/")[0] if model.engine is Engine.LLAMA_CPP else model.source.path
        return storage.volume_mount(
            store, read_only=True, sub_path=directory.rstrip("/"), mount_path=weights_path(model)
        )
    if copies_to_cache(stack=stack, model=model):
        return cache_volume(stack=stack, model=model), {"name": "weights", "mountPath": MODELS_ROOT}
    if model.engine is Engine.LLAMA_CPP:
        # One GGUF file of a CPU model: node-local disk, which every cluster has (no storage
        # class or CSI driver needed, as small CPU deployments often lack them), world-writable
        # for the non-root loader, and like the claim below it outlives container restarts.
        return {"name": "weights", "emptyDir": {"sizeLimit": model.cache.size}}, {"name": "weights",
                                                                                  "mountPath": MODELS_ROOT}
    claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"]}
    if model.cache.storage_class_name is not None:
        claim["storageClassName"] = model.cache.storage_class_name
    claim["resources"] = {"requests": {"storage": model.cache.size}}
    volume = {
        "name": "weights",
        "ephemeral": {
            "volumeClaimTemplate": {
                "metadata": {"labels": names.labels(stack, component=Component.INFERENCE, name=model.name)},
                "spec": claim,
            }
        },
    }
    return volume, {"name": "weights", "mountPath": MODELS_ROOT}


def _vllm(model: ModelSpec, weights_mount: dict[str, Any] | None, resources: dict[str, Any], *,
          load_seconds: int, streamed_from: DataStore | None = None) -> dict[str, Any]:
    """The vLLM container: serving the weights on its volume, or ``streamed_from`` an S3 store."""
    gpus = str(model.gpus)
    env = [pod.value(key, text) for key, text in OFFLINE_ENV.items()]
    if streamed_from is None:
        weights, streaming = weights_path(model), []
    else:
        weights, streaming = _streamed(model, streamed_from)
        env += _streamer_env(streamed_from)
    return {
        "name": "vllm",
        "image": model.image or DEFAULT_VLLM_IMAGE,
        "command": ["vllm", "serve"],
        "args": [
            weights,
            "--served-model-name", model.name, model.model,
            "--tensor-parallel-size", gpus,
            "--host", "0.0.0.0",
            "--port", str(names.MODEL_PORT),
            *streaming,
            *model.extra_args,
        ],
        "env": pod.sorted_env(env),
        "ports": [{"name": "http", "containerPort": names.MODEL_PORT, "protocol": "TCP"}],
        "resources": resources,
        # Startup: long enough to load large weights; after that, restart only a server that stays
        # unhealthy for a minute, and stop sending it requests after 15 seconds.
        "startupProbe": _health_probe(
            period=STARTUP_PERIOD_SECONDS,
            failures=math.ceil(load_seconds / STARTUP_PERIOD_SECONDS),
        ),
        "readinessProbe": _health_probe(period=5, failures=3),
        "livenessProbe": _health_probe(period=10, failures=6),
        "volumeMounts": [*([weights_mount] if weights_mount else []), {"name": "dshm", "mountPath": "/dev/shm"}],
    }


def _streamed(model: ModelSpec, store: DataStore) -> tuple[str, list[str]]:
    """The model argument and flags of vLLM streaming ``source.path`` from the store's bucket."""
    s3 = store.s3
    assert s3 is not None, "api validation streams only from S3 stores"
    prefix = model.source.path.rstrip("/")
    uri = f"s3://{s3.bucket}/{prefix}" if prefix else f"s3://{s3.bucket}"
    extra = json.dumps({"concurrency": STREAMER_CONCURRENCY}, separators=(",", ":"))
    return uri, ["--load-format", "runai_streamer", "--model-loader-extra-config", extra]


def _streamer_env(store: DataStore) -> list[pod.EnvVar]:
    """Where the streamer finds the bucket and its credentials (the store's Secret, by reference)."""
    s3 = store.s3
    assert s3 is not None, "api validation streams only from S3 stores"
    env = [pod.value("AWS_REGION", s3.region), pod.value("AWS_DEFAULT_REGION", s3.region),
           pod.value(STREAMER_METADATA_ENV, "true"), *storage.credentials_env(store)]
    if s3.endpoint:
        env += [pod.value(key, s3.endpoint) for key in STREAMER_ENDPOINT_ENV]
    if s3.force_path_style:
        env.append(pod.value(STREAMER_VIRTUAL_ADDRESSING_ENV, "0"))
    return env


def _health_probe(*, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def _disruption_budget(stack: SovereignStack, model: ModelSpec) -> dict[str, Any]:
    return names.stamped({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.metadata(stack, name=model.name, component=Component.INFERENCE, entry=model.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(stack, component=Component.INFERENCE, name=model.name)},
        },
    })


def scale_down_window(*, stack: SovereignStack, model: ModelSpec) -> int:
    """The HPA's scale-down stabilization window of an autoscaled model, in seconds: the time a
    new replica may take to copy and load its weights (``render.deadlines``), at least the HPA's
    own default and at most what the HPA accepts.

    The HPA scales down to the highest recommendation of the window, and the ReplicaSet removes
    pods that are not Ready first: with a shorter window, a replica added for a burst would be
    the one removed while still loading, once the queue had drained on the others."""
    windows = model_windows(stack=stack, model=model)
    return max(HPA_DEFAULT_SCALE_DOWN_SECONDS, min(HPA_MOST_STABILIZATION_SECONDS, windows.rollout_seconds))


def _scaled_object(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts) -> dict[str, Any]:
    scaling = model.autoscaling
    assert scaling is not None, "only autoscaled models have a ScaledObject"
    # By the labels every scrape target gives the series (render.monitoring): the stack's
    # namespace and name and the model's name, so a same-named model of another stack is not counted.
    query = monitoring.queue_query(stack=stack, model=model)
    return names.stamped({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": names.metadata(stack, name=model.name, component=Component.INFERENCE, entry=model.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                "stabilizationWindowSeconds": scale_down_window(stack=stack, model=model),
            }}}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": facts.prometheus_url,
                        "query": query,
                        "threshold": str(scaling.target_waiting_requests),
                    },
                }
            ],
        },
    })


def _logical_selection(plan: rollout.RolloutDecision) -> dict[str, Any]:
    """What the logical Service of a blue/green model selects, and the canary it records."""
    if plan.canary is not None:
        return {"revision": None, "annotations": {
            names.SERVING_REVISION_ANNOTATION: plan.serving or names.NO_REVISION,
            names.CANARY_REVISION_ANNOTATION: plan.canary.revision,
            names.CANARY_SINCE_ANNOTATION: plan.canary.since.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    aborted = ({names.CANARY_ABORTED_ANNOTATION: f"{plan.aborted.revision}: {plan.aborted.message}"}
               if plan.aborted is not None else None)
    return {"revision": plan.serving or names.NO_REVISION, "annotations": aborted}


def _blue_green(stack: SovereignStack, model: ModelSpec, facts: ClusterFacts, *, filled: bool) -> list[dict[str, Any]]:
    """A model with evaluation (``policy.rollout``): a Deployment per revision the rollout runs
    (``<model>-<revision>``) and a Service of its own for a candidate, the evaluation Job, and the
    logical Service selecting the serving revision only, or no pod while none has passed, or
    during a canary every revision of the model (the serving one and the candidate, the only two
    left), with annotations recording which is which and since when. Without
    an observed rollout (an offline render) it is the operator's first pass over a new stack: the
    spec's model starting as the candidate, nothing served yet."""
    plan = (facts.rollouts or {}).get(model.name) or rollout.decide(
        model=model, observed=rollout.Observed(serving=None), now=_NEVER)
    serving, rendered, evaluations = plan.serving, plan.rendered, plan.evaluations
    objects: list[dict[str, Any]] = []
    for revision in rendered if filled else ():
        objects.append(model_deployment(stack, model, facts, revision=revision,
                                        replicas=plan.replicas if revision == plan.desired else None))
        if revision != serving:
            objects.append(cluster_ip_service(stack=stack, name=names.revision_name(model=model.name, revision=revision),
                                              entry=model.name, revision=revision, component=Component.INFERENCE,
                                              port=names.MODEL_PORT))
    # A model adopted from before evaluation was set keeps its old Service until its revision takes over.
    if not (plan.keep_legacy and serving is None):
        objects.append(cluster_ip_service(stack=stack, name=model.name, component=Component.INFERENCE,
                                          port=names.MODEL_PORT, **_logical_selection(plan)))
    if model.replicas > 1:
        objects.append(_disruption_budget(stack, model))
    objects += [evaluation_job(stack=stack, model=model, revision=revision, facts=facts) for revision in evaluations]
    return objects
