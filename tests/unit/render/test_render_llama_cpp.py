"""The llama.cpp objects of a CPU-engine model (the cpu sample): the same Service and application
contract as vLLM, llama-server's command line, CPU placement, resources and confinement."""

from __future__ import annotations

from render_inputs import sample_document, stack_from  # next to this file

from sovereign.api.engines import LLAMA_CPP_IMAGE
from sovereign.cli.fetch_model import command as fetch_model
from sovereign.render.application import application_env
from sovereign.render.facts import ClusterFacts, Hold
from sovereign.render.inference import render_model
from sovereign.render.names import GPU_RESOURCE, GPU_TAINT


def _objects(stack, facts, name="chat"):
    model = next(m for m in stack.spec.models if m.name == name)
    return {obj["kind"]: obj for obj in render_model(stack=stack, model=model, facts=facts)}


def _pod(objects):
    return objects["Deployment"]["spec"]["template"]["spec"]


def _server(objects):
    (container,) = _pod(objects)["containers"]
    return container


def _flag(args, flag):
    return args[args.index(flag) + 1]


def test_llama_server_serves_the_gguf_file_under_the_logical_name_on_the_service_port(cpu_stack, facts) -> None:
    objects = _objects(cpu_stack, facts)
    server = _server(objects)
    (service_port,) = objects["Service"]["spec"]["ports"]

    assert server["name"] == "llama-server"
    assert server["command"] == ["/app/llama-server"]
    args = server["args"]
    assert _flag(args, "--model") == "/models/chat/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    assert _flag(args, "--alias") == "chat,qwen2.5-0.5b-instruct-q4_k_m"
    assert _flag(args, "--host") == "0.0.0.0"
    assert int(_flag(args, "--port")) == server["ports"][0]["containerPort"] == service_port["port"] == 8000
    assert service_port["targetPort"] == server["ports"][0]["name"] == "http"
    assert "--metrics" in args and "--no-webui" in args
    assert args[-2:] == ["--ctx-size", "4096"], "extraArgs come last, as given"


def test_llama_server_downloads_nothing_and_reports_nothing(cpu_stack, facts) -> None:
    env = {v["name"]: v["value"] for v in _server(_objects(cpu_stack, facts))["env"]}

    assert env == {"LLAMA_ARG_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}


def test_every_container_gets_the_model_resources_as_requests_and_limits(cpu_stack, facts) -> None:
    """Guaranteed QoS: every container, the loader included, has requests equal to limits."""
    pod = _pod(_objects(cpu_stack, facts))
    expected = {"cpu": "4", "memory": "2Gi"}

    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["resources"] == {"requests": expected, "limits": expected}, container["name"]
    assert _flag(_server(_objects(cpu_stack, facts))["args"], "--threads") == "4"


def test_threads_are_whole_cpus_and_at_least_one(facts) -> None:
    for cpu, threads in (("3500m", "3"), ("500m", "1"), ("16", "16")):
        document = sample_document("cpu")
        document["spec"]["models"][0]["resources"]["cpu"] = cpu
        assert _flag(_server(_objects(stack_from(document), facts))["args"], "--threads") == threads


def test_a_cpu_pod_asks_for_no_gpu_and_tolerates_no_gpu_taint(cpu_stack, facts) -> None:
    pod = _pod(_objects(cpu_stack, facts))

    assert "tolerations" not in pod
    assert not any(GPU_RESOURCE in part for part in _server(_objects(cpu_stack, facts))["resources"].values())
    assert GPU_TAINT["key"] not in str(pod["affinity"])


def test_pods_require_the_allowed_regions_and_the_claimed_cpu_nodes(cpu_stack, facts) -> None:
    terms = _pod(_objects(cpu_stack, facts))["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]

    assert terms == [{"matchExpressions": [
        {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]},
        {"key": "sovereign.ai/pool", "operator": "In", "values": ["cpu"]},
        {"key": "sovereign.ai/stack-id", "operator": "In", "values": ["gov-qa.cpu-assistant"]},
    ]}]


def test_pod_runs_as_non_root_on_a_read_only_root_filesystem(cpu_stack, facts) -> None:
    pod = _pod(_objects(cpu_stack, facts))

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in [*pod["initContainers"], *pod["containers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in _server(_objects(cpu_stack, facts))["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True, "the server only reads the weights the loader wrote"
    assert "/tmp" in mounts


def test_image_is_the_pinned_llama_cpp_server_unless_the_model_names_one(cpu_stack, facts) -> None:
    assert _server(_objects(cpu_stack, facts))["image"] == LLAMA_CPP_IMAGE
    assert LLAMA_CPP_IMAGE.startswith("ghcr.io/ggml-org/llama.cpp:server-b")

    document = sample_document("cpu")
    document["spec"]["models"][0]["image"] = "registry.gov.qa/llama.cpp:server-b11312"
    assert _server(_objects(stack_from(document), facts))["image"] == "registry.gov.qa/llama.cpp:server-b11312"


def test_loader_copies_the_one_gguf_file_where_the_server_reads_it(cpu_stack, facts, monkeypatch) -> None:
    pod = _pod(_objects(cpu_stack, facts))
    (loader,) = pod["initContainers"]
    for variable in loader["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    context = fetch_model.make_context("fetch-model", list(loader["args"]))

    assert context.params["path"] == "gguf/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    # fetch-model puts a one-object path under its base name inside --dest.
    model_path = _flag(_server(_objects(cpu_stack, facts))["args"], "--model")
    assert model_path == f"{context.params['dest']}/qwen2.5-0.5b-instruct-q4_k_m.gguf"


def test_the_gguf_file_is_kept_in_a_node_local_volume_sized_by_the_cache(cpu_stack, facts) -> None:
    """No storage class or CSI driver needed: an emptyDir, which outlives container restarts."""
    volumes = {v["name"]: v for v in _pod(_objects(cpu_stack, facts))["volumes"]}

    assert volumes["weights"] == {"name": "weights", "emptyDir": {"sizeLimit": "2Gi"}}


def test_gguf_on_a_volume_store_is_read_from_its_directory_without_a_loader(facts) -> None:
    document = sample_document("cpu")
    document["spec"]["dataStores"].append({"name": "disk", "volume": {"size": "10Gi"}})
    document["spec"]["models"][0]["source"] = {"dataStore": "disk", "path": "gguf/tiny/tiny.gguf"}
    objects = _objects(stack_from(document), facts)

    assert "initContainers" not in _pod(objects)
    mount = next(m for m in _server(objects)["volumeMounts"] if m["mountPath"] == "/models/chat")
    assert (mount["subPath"], mount["readOnly"]) == ("gguf/tiny", True)
    assert _flag(_server(objects)["args"], "--model") == "/models/chat/tiny.gguf"


def test_a_held_back_model_runs_no_replica(cpu_stack, facts) -> None:
    held = ClusterFacts(nodes=facts.nodes, operator_image=facts.operator_image,
                        held_back={"chat": Hold("ModelFileMissing", "no GGUF file")})

    assert _objects(cpu_stack, held)["Deployment"]["spec"]["replicas"] == 0


def test_applications_get_the_same_endpoint_whichever_engine_serves_the_model(cpu_stack) -> None:
    """The logical name is the contract: switching chat from llama.cpp to vLLM changes nothing
    in the application's environment."""
    (app,) = cpu_stack.spec.applications
    on_cpu = application_env(stack=cpu_stack, app=app)
    document = sample_document("cpu")
    document["spec"]["nodePools"].append({"name": "gpu", "provisioner": "Existing",
                                          "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8}})
    model = document["spec"]["models"][0]
    for field in ("engine", "resources", "extraArgs"):
        del model[field]
    model |= {"nodePool": "gpu", "source": {"dataStore": "weights", "path": "qwen/"}}
    on_gpu_stack = stack_from(document)

    assert application_env(stack=on_gpu_stack, app=on_gpu_stack.spec.applications[0]) == on_cpu
    assert {v["name"]: v["value"] for v in on_cpu}["SOVEREIGN_MODEL_CHAT_URL"] == "http://chat.gov-qa.svc:8000/v1"
