"""Application objects: model endpoints by logical name, stores wired by reference, region pinning."""

from __future__ import annotations

from render_inputs import sample_document, stack_from  # next to this file

from sovereign.render.application import render_application
from sovereign.render.facts import ClusterFacts


def _objects(stack, name):
    app = next(a for a in stack.spec.applications if a.name == name)
    return {obj["kind"]: obj for obj in render_application(stack=stack, app=app, facts=ClusterFacts())}


def _container(objects):
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(objects):
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in _container(objects)["env"]}


def test_each_model_is_given_by_its_logical_name(full_stack) -> None:
    env = _env(_objects(full_stack, "assistant"))

    assert env["SOVEREIGN_MODEL_CHAT_URL"] == "http://chat.gov-qa.svc:8000/v1"
    assert env["SOVEREIGN_MODEL_CHAT_NAME"] == "chat"
    assert env["SOVEREIGN_MODEL_EMBED_URL"] == "http://embed.gov-qa.svc:8000/v1"
    assert env["SOVEREIGN_MODEL_EMBED_NAME"] == "embed"
    assert "OPENAI_BASE_URL" not in env  # two models: no single default


def test_openai_base_url_only_with_exactly_one_model(full_stack) -> None:
    assert _env(_objects(full_stack, "indexer"))["OPENAI_BASE_URL"] == "http://embed.gov-qa.svc:8000/v1"


def test_swapping_a_model_changes_no_application_object(full_stack, full_document) -> None:
    full_document["spec"]["models"][0]["model"] = "meta-llama/Llama-3.3-70B-Instruct"
    swapped = stack_from(full_document)

    for app in ("assistant", "indexer"):
        assert _objects(swapped, app) == _objects(full_stack, app)


def test_environment_is_sorted_and_the_application_env_wins(full_stack) -> None:
    document = sample_document("full")
    document["spec"]["applications"][0]["env"].append({"name": "SOVEREIGN_MODEL_CHAT_NAME", "value": "custom"})
    container = _container(_objects(stack_from(document), "assistant"))
    names = [v["name"] for v in container["env"]]

    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert {"name": "SOVEREIGN_MODEL_CHAT_NAME", "value": "custom"} in container["env"]
    assert {"name": "LOG_LEVEL", "value": "info"} in container["env"]


def test_s3_store_is_wired_with_secret_references_only(full_stack) -> None:
    container = _container(_objects(full_stack, "assistant"))
    env = _env(_objects(full_stack, "assistant"))

    assert env["SOVEREIGN_STORE_CORPUS_BUCKET"] == "qa-corpus"
    assert env["SOVEREIGN_STORE_CORPUS_ENDPOINT"] == "https://s3.gov.qa"
    assert env["AWS_REGION"] == "me-central-1"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SOVEREIGN_STORE_CORPUS_SECRET_ACCESS_KEY"):
        variable = next(v for v in container["env"] if v["name"] == name)
        assert "value" not in variable
        assert variable["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"


def test_volume_store_is_mounted_under_data(full_stack) -> None:
    objects = _objects(full_stack, "assistant")

    assert _container(objects)["volumeMounts"] == [{"name": "store-scratch", "mountPath": "/data/scratch"}]
    (volume,) = objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "scratch"
    assert _env(objects)["SOVEREIGN_STORE_SCRATCH_PATH"] == "/data/scratch"


def test_pods_are_pinned_to_the_allowed_regions_and_a_port_gets_a_service(full_stack) -> None:
    objects = _objects(full_stack, "assistant")
    terms = objects["Deployment"]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]

    assert terms == [{"matchExpressions": [
        {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]}]}]
    assert objects["Service"]["spec"]["ports"][0]["port"] == 8080
    assert "Service" not in _objects(full_stack, "indexer")  # no port, no Service
