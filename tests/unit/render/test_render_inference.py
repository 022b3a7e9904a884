"""The vLLM objects of a model: how it is served, where it may run, where its weights come from."""

from __future__ import annotations

import math

import click
import pytest
from render_inputs import sample_document, stack_from  # next to this file

from sovereign.cli.fetch_model import command as fetch_model
from sovereign.api.models import COPY_BASE_SECONDS
from sovereign.render.facts import ClusterFacts
from sovereign.render.inference import DEFAULT_VLLM_IMAGE, render_model


def _objects(stack, facts, name):
    model = next(m for m in stack.spec.models if m.name == name)
    return {obj["kind"]: obj for obj in render_model(stack=stack, model=model, facts=facts)}


def _pod(objects):
    return objects["Deployment"]["spec"]["template"]["spec"]


def _vllm(objects):
    return next(c for c in _pod(objects)["containers"] if c["name"] == "vllm")


def _deployment(objects):
    return objects["Deployment"] if isinstance(objects, dict) else next(
        o for o in objects if o["kind"] == "Deployment")


def _with_model(stack, name, **fields):
    """The stack with fields of one model replaced (validated again, as the apiserver would)."""
    document = stack.model_dump(mode="json", by_alias=True, exclude_none=True)
    model = next(m for m in document["spec"]["models"] if m["name"] == name)
    model.pop("startupTimeoutSeconds", None)
    model.update(fields)
    return stack_from(document)


def test_vllm_serves_local_weights_under_the_logical_name_first(full_stack, facts) -> None:
    args = _vllm(_objects(full_stack, facts, "chat"))["args"]

    assert args[0] == "/models/chat"
    names = args[args.index("--served-model-name") + 1: args.index("--served-model-name") + 3]
    assert names == ["chat", "Qwen/Qwen2.5-72B-Instruct"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--port") + 1] == "8000"
    assert args[-2:] == ["--max-model-len=32768", "--enable-prefix-caching"]


def test_vllm_runs_with_hub_and_usage_reporting_off(full_stack, facts) -> None:
    env = {v["name"]: v["value"] for v in _vllm(_objects(full_stack, facts, "chat"))["env"]}

    assert env == {"DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def test_gpus_shared_memory_and_toleration_follow_gpus_per_replica(full_stack, facts) -> None:
    objects = _objects(full_stack, facts, "chat")
    vllm = _vllm(objects)

    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == vllm["resources"]["limits"]["nvidia.com/gpu"] == "4"
    shm = next(v for v in _pod(objects)["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    assert _pod(objects)["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_pods_require_the_allowed_regions_the_pool_and_the_gpu_product(full_stack, facts) -> None:
    for name, pool_key, pool_value in (
        ("chat", "karpenter.sh/nodepool", "gov-qa-citizen-services-h100"),
        ("embed", "sovereign.ai/pool", "onprem"),
    ):
        terms = _pod(_objects(full_stack, facts, name))["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        required = {e["key"]: e["values"] for e in terms[0]["matchExpressions"]}
        assert required["topology.kubernetes.io/region"] == ["me-central-1"]
        assert required[pool_key] == [pool_value]
        assert required["nvidia.com/gpu.product"] == ["NVIDIA-H100-80GB-HBM3"]


def test_startup_window_follows_the_spec_or_grows_with_the_weights(full_stack, facts) -> None:
    def window(stack, name, facts=facts):
        probe = _vllm(_objects(stack, facts, name))["startupProbe"]
        assert probe["httpGet"] == {"path": "/health", "port": "http"}
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert window(full_stack, "chat") == 3600, "startupTimeoutSeconds, as set"
    # Unset: 600 s plus the weights (cache.size, 200Gi by default) at 50Mi/s, in whole periods.
    assert window(full_stack, "embed") == 4700 >= 600 + 200 * 1024 / 50
    larger = _with_model(full_stack, "embed", cache={"size": "400G"}, weightsThroughput="200Mi")
    assert window(larger, "embed") == math.ceil((600 + math.ceil(400e9 / (200 * 2**20))) / 10) * 10


def test_a_400_gb_model_gets_a_rollout_deadline_made_for_400_gb_not_15(full_stack, facts) -> None:
    def deadline(size):
        stack = _with_model(full_stack, "embed", cache={"size": size})
        return _deployment(_objects(stack, facts, "embed"))["spec"]["progressDeadlineSeconds"]

    # The copy and the load, each 120 s / 600 s plus size / 50Mi/s.
    assert deadline("15G") == 120 + math.ceil(15e9 / 50 / 2**20) + 600 + math.ceil(15e9 / 50 / 2**20)
    assert deadline("400G") == 120 + 600 + 2 * math.ceil(400e9 / 50 / 2**20)
    assert deadline("400G") > 2 * 400e9 / (50 * 2**20), "copying and loading 400 GB at 50Mi/s fits"


def test_a_cpu_models_windows_come_from_its_cache_size_not_from_the_bucket(cpu_stack) -> None:
    """The emptyDir's limit (cache.size) bounds the GGUF file, so it sizes the windows; what the
    store check reads in the bucket does not, so an offline render prints the same deadline."""
    stack = _with_model(cpu_stack, cpu_stack.spec.models[0].name, cache={"size": "2Gi"})
    deployment = _deployment(render_model(stack=stack, model=stack.spec.models[0], facts=ClusterFacts()))
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    seconds = math.ceil(2 * 2**30 / (50 * 2**20))
    assert deployment["spec"]["progressDeadlineSeconds"] == 120 + seconds + 600 + seconds
    assert server["startupProbe"]["failureThreshold"] == 600 + seconds


def test_image_is_pinned_unless_the_model_names_one(full_stack, facts) -> None:
    assert _vllm(_objects(full_stack, facts, "chat"))["image"] == DEFAULT_VLLM_IMAGE
    assert ":" in DEFAULT_VLLM_IMAGE and not DEFAULT_VLLM_IMAGE.endswith(":latest")
    assert _vllm(_objects(full_stack, facts, "embed"))["image"] == "registry.gov.qa/vllm/vllm-openai:v0.33.0"


def test_autoscaled_model_leaves_replicas_to_keda(full_stack, facts) -> None:
    objects = _objects(full_stack, facts, "chat")

    assert "replicas" not in objects["Deployment"]["spec"]
    scaled = objects["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 4)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    # The labels the model's scrape target gives every series (render.monitoring).
    assert trigger["metadata"]["query"] == (
        'sum(vllm:num_requests_waiting{namespace="gov-qa",stack="citizen-services",model="chat"})')
    assert trigger["metadata"]["threshold"] == "8"


def test_disruption_budget_only_with_several_replicas(full_stack, facts) -> None:
    assert "PodDisruptionBudget" in _objects(full_stack, facts, "chat")  # up to 4 replicas
    embed = _objects(full_stack, facts, "embed")
    assert "PodDisruptionBudget" not in embed
    assert embed["Deployment"]["spec"]["replicas"] == 1
    assert set(embed) == {"Deployment", "Service", "PodMonitor"}


def test_service_exposes_port_8000_of_the_model_pods(full_stack, facts) -> None:
    objects = _objects(full_stack, facts, "embed")
    service = objects["Service"]["spec"]

    assert service["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert service["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]


def test_loader_fetches_from_the_declared_store_with_credentials_from_its_secret(full_stack, facts) -> None:
    pod = _pod(_objects(full_stack, facts, "chat"))
    (loader,) = pod["initContainers"]

    assert loader["image"] == facts.operator_image
    assert loader["command"] == ["sovereign", "fetch-model"]
    secret_refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in loader["env"] if "valueFrom" in v}
    assert secret_refs == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert [v["name"] for v in loader["env"]] == sorted(v["name"] for v in loader["env"])
    assert {"name": "weights", "mountPath": "/models"} in loader["volumeMounts"]


def test_loader_environment_is_what_fetch_model_reads(full_stack, facts, monkeypatch, tmp_path) -> None:
    """The contract between this builder and ``sovereign fetch-model``: its own option parser,
    fed the rendered container's command line and environment, gets the store and paths."""
    (loader,) = _pod(_objects(full_stack, facts, "chat"))["initContainers"]
    for variable in loader["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    context = fetch_model.make_context("fetch-model", list(loader["args"]))

    assert context.params["endpoint"] == "https://s3.gov.qa"
    assert context.params["region"] == "me-central-1"
    assert context.params["bucket"] == "qa-corpus"
    assert context.params["path"] == "models/qwen2.5-72b-instruct/"
    assert str(context.params["dest"]) == "/models/chat"
    assert context.params["allowed_regions"] == "me-central-1"
    assert context.params["path_style"] is True
    assert context.params["progress_mode"] == "plain"


def test_weights_volume_is_per_replica_and_sized_by_the_cache(full_stack, facts) -> None:
    volume = next(v for v in _pod(_objects(full_stack, facts, "chat"))["volumes"] if v["name"] == "weights")
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]

    assert claim == {"accessModes": ["ReadWriteOnce"], "storageClassName": "regional-ssd",
                     "resources": {"requests": {"storage": "300Gi"}}}


def test_weights_on_a_volume_store_are_mounted_read_only_without_a_loader(facts) -> None:
    document = sample_document("full")
    document["spec"]["models"][1]["source"] = {"dataStore": "scratch", "path": "models/bge-m3/"}
    stack = stack_from(document)
    pod = _pod(_objects(stack, facts, "embed"))

    assert "initContainers" not in pod
    mount = next(m for m in _vllm(_objects(stack, facts, "embed"))["volumeMounts"] if m["mountPath"] == "/models/embed")
    assert mount["subPath"] == "models/bge-m3" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": "scratch", "readOnly": True}


@pytest.mark.parametrize("flag", ["--endpoint", "--bucket", "--dest"])
def test_fetch_model_still_has_the_options_the_loader_relies_on(flag) -> None:
    assert any(flag in param.opts for param in fetch_model.params if isinstance(param, click.Option))


def _qos_class(pod: dict) -> str:
    """The QoS class the apiserver gives a pod (pkg/apis/core/helper/qos): only cpu and memory
    count; Guaranteed when every container limits both to its requests, BestEffort when none
    asks for either."""
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    parts = [{kind: {k: v for k, v in c.get("resources", {}).get(kind, {}).items() if k in ("cpu", "memory")}
              for kind in ("requests", "limits")} for c in containers]
    if not any(part["requests"] or part["limits"] for part in parts):
        return "BestEffort"
    if all(set(part["limits"]) == {"cpu", "memory"} and part["requests"] in ({}, part["limits"]) for part in parts):
        return "Guaranteed"
    return "Burstable"


def test_a_vllm_replica_and_its_loader_request_cpu_and_memory_per_gpu(full_stack, facts) -> None:
    """Not BestEffort: 2 CPU and 16Gi per GPU requested (memory also the limit), the loader alike."""
    pod = _pod(_objects(full_stack, facts, "chat"))
    loader = next(c for c in pod["initContainers"] if c["name"] == "fetch-model")

    assert _vllm(_objects(full_stack, facts, "chat"))["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"},
    }
    assert loader["resources"] == {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}
    assert _qos_class(pod) == "Burstable"


def test_a_vllm_model_overrides_its_cpu_and_memory_with_resources(full_document, facts) -> None:
    full_document["spec"]["models"][0]["resources"] = {"cpu": "24", "memory": "200Gi"}
    objects = _objects(stack_from(full_document), facts, full_document["spec"]["models"][0]["name"])

    assert _vllm(objects)["resources"]["requests"] == {"cpu": "24", "memory": "200Gi", "nvidia.com/gpu": "4"}
    assert _vllm(objects)["resources"]["limits"] == {"memory": "200Gi", "nvidia.com/gpu": "4"}
    assert _qos_class(_pod(objects)) == "Burstable"


def test_no_model_of_the_samples_renders_a_best_effort_pod(facts) -> None:
    for sample in ("full", "minimal", "cpu"):
        stack = stack_from(sample_document(sample))
        for model in stack.spec.models:
            assert _qos_class(_pod(_objects(stack, facts, model.name))) != "BestEffort", (sample, model.name)


def _scale_down_window(stack, facts):
    scaled = _objects(stack, facts, "chat")["ScaledObject"]["spec"]
    return scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]


def test_autoscaler_keeps_a_new_replica_while_it_copies_and_loads(full_stack, facts) -> None:
    # 300Gi copied by the replica's own loader at 200Mi/s (1536 s), then a 900 s load.
    stack = _with_model(full_stack, "chat", startupTimeoutSeconds=900, weightsThroughput="200Mi")

    assert _scale_down_window(stack, facts) == COPY_BASE_SECONDS + 1536 + 900


def test_scale_down_window_stays_within_what_the_hpa_accepts(full_stack, facts) -> None:
    # The sample's 300Gi model with a one-hour load: the HPA refuses more than 3600 s.
    assert _scale_down_window(full_stack, facts) == 3600
    # A model that loads in seconds keeps the HPA's default of five minutes.
    small = _with_model(full_stack, "chat", startupTimeoutSeconds=60, cache={"size": "1Gi"}, weightsThroughput="1Gi")
    assert _scale_down_window(small, facts) == 300
