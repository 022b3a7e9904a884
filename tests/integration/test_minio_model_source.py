"""A llama-cpp model's GGUF file, looked at in a real MinIO bucket: a path that holds no model is
refused with the field path and the fix, and the model is held back (no replica, nothing copied),
while a path holding a GGUF file passes. The stack is stored by the real apiserver, its
credentials come from a real Secret, and the verdicts flow into the render and the status the
reconciler writes. A model vLLM streams from the bucket needs safetensors under its path, or it is
held back the same way, naming what the path holds."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION, parse_stack
from sovereign.kube.client import Kube
from sovereign.policy import model_source as ms
from sovereign.render.facts import ClusterFacts, NodeFacts
from sovereign.render.names import POOL_LABEL, REGION_LABEL, STACK_LABEL, object_key
from sovereign.render.stack import render_stack
from sovereign.render.status import Observation, compute_status
from sovereign.services.reconcile import with_store_verdicts
from sovereign.services.residency_stores import verify_data_stores
from sovereign.services.store_check import probe_object
from sovereign.stores.credentials import Credentials
from sovereign.stores.s3 import S3Store
from sovereign_dev.minio import MinioServer

pytestmark = pytest.mark.minio
GGUF = b"GGUF" + bytes([3, 0, 0, 0]) + bytes(4096)
FIELD = "spec.models[0].source.path"


def store_of(server: MinioServer) -> S3Store:
    return S3Store(endpoint=server.endpoint, region=server.region, path_style=True,
                   credentials=Credentials(access_key_id=server.access_key, secret_access_key=server.secret_key))


@pytest.fixture
def qa(minio_servers) -> MinioServer:
    return minio_servers["me-central-1"]


@pytest.fixture
def bucket(qa: MinioServer, minio_bucket_name: str) -> str:
    """An encrypted bucket in the allowed region holding one GGUF file, a file that is not GGUF
    and an empty one."""
    store_of(qa).create_bucket(bucket=minio_bucket_name, region="me-central-1", encryption=True, versioning=False)
    objects = qa.client()
    objects.put_object(Bucket=minio_bucket_name, Key="gguf/tiny.gguf", Body=GGUF)
    objects.put_object(Bucket=minio_bucket_name, Key="gguf/tiny.safetensors", Body=b"\x08\x00\x00\x00{}")
    objects.put_object(Bucket=minio_bucket_name, Key="gguf/renamed.gguf", Body=b"PK\x03\x04zip")
    objects.put_object(Bucket=minio_bucket_name, Key="gguf/empty.gguf", Body=b"")
    return minio_bucket_name


def decide(server: MinioServer, bucket: str, key: str) -> ms.Decision:
    return ms.check_gguf(probe=probe_object(store=store_of(server), bucket=bucket, key=key), field=FIELD)


def test_a_gguf_file_passes(qa, bucket) -> None:
    decision = decide(qa, bucket, "gguf/tiny.gguf")

    assert (decision.ok, decision.reason) == (True, ms.MODEL_FILE_PRESENT)
    assert decision.message == f"s3://{bucket}/gguf/tiny.gguf is a GGUF file of {len(GGUF)} bytes"


def test_a_missing_file_names_the_field_the_gguf_files_beside_it_and_the_fix(qa, bucket) -> None:
    decision = decide(qa, bucket, "gguf/tiny-v2.gguf")

    assert (decision.ok, decision.reason) == (False, ms.MODEL_FILE_MISSING)
    assert decision.message == (
        f"{FIELD}: s3://{bucket}/gguf/tiny-v2.gguf does not exist (GGUF files in s3://{bucket}/gguf/: "
        f"gguf/empty.gguf, gguf/renamed.gguf, gguf/tiny.gguf): upload the model's GGUF file there, or set "
        f"{FIELD} to the key of one")


def test_a_missing_directory_says_it_holds_no_gguf_file(qa, bucket) -> None:
    decision = decide(qa, bucket, "models/other/tiny.gguf")

    assert decision.reason == ms.MODEL_FILE_MISSING
    assert f"s3://{bucket}/models/other/ holds no GGUF file" in decision.message


@pytest.mark.parametrize(("key", "said"), [
    ("gguf/renamed.gguf", "is not a GGUF file (it starts with b'PK\\x03\\x04', a GGUF file with b'GGUF')"),
    ("gguf/empty.gguf", "is empty"),
])
def test_a_file_that_holds_no_gguf_model_is_refused(qa, bucket, key, said) -> None:
    decision = decide(qa, bucket, key)

    assert (decision.ok, decision.reason) == (False, ms.MODEL_FILE_NOT_GGUF)
    assert decision.message.startswith(f"{FIELD}: s3://{bucket}/{key} {said}")


# --- through the reconciler's verification, render and status ------------------------------------


@pytest.fixture
def kube(cluster):
    connection = Kube(cluster.api_client())
    yield connection
    connection.close()


def cpu_stack(api_client, namespace: str, qa: MinioServer, bucket: str, path: str):
    """A CPU stack as the apiserver stores it, with the store's credentials in a real Secret."""
    data = {"AWS_ACCESS_KEY_ID": qa.access_key, "AWS_SECRET_ACCESS_KEY": qa.secret_key}
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": "s3-creds"},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack",
            "metadata": {"name": "cpu", "namespace": namespace},
            "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"]},
                     "nodePools": [{"name": "cpu", "provisioner": "Existing"}],
                     "dataStores": [{"name": "weights", "s3": {
                         "bucket": bucket, "region": "me-central-1", "endpoint": qa.endpoint, "forcePathStyle": True,
                         "credentialsSecretRef": {"name": "s3-creds"}}}],
                     "models": [{"name": "chat", "engine": "llama-cpp", "model": "tiny", "nodePool": "cpu",
                                 "source": {"dataStore": "weights", "path": path},
                                 "resources": {"cpu": "1", "memory": "1Gi"}}],
                     "applications": [{"name": "assistant", "image": "registry.gov.qa/assistant:1",
                                       "models": ["chat"]}]}}
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                  PLURAL, body)
    return parse_stack(created)


def conditions(stack, facts, desired) -> dict[str, tuple[str, str, str]]:
    """The status the reconciler computes once everything it applied has settled."""
    children = {}
    for obj in desired:
        live = {**obj, "metadata": {**obj["metadata"], "generation": 1}}
        if obj["kind"] == "Deployment":
            want = obj["spec"]["replicas"]
            live["status"] = {"observedGeneration": 1, "replicas": want, "updatedReplicas": want,
                              "readyReplicas": want, "availableReplicas": want}
        children[object_key(obj)] = live
    status = compute_status(stack=stack, facts=facts, observation=Observation(children=children), previous=None,
                            now=datetime.now(UTC))
    return {c.type: (c.status.value, c.reason, c.message) for c in status.conditions}


def replicas(desired) -> dict[str, int]:
    return {obj["metadata"]["name"]: obj["spec"]["replicas"] for obj in desired if obj["kind"] == "Deployment"}


def node_facts(namespace: str) -> ClusterFacts:
    node = NodeFacts(name="cpu-0", ready=True, owner=f"{namespace}/cpu",
                     labels={REGION_LABEL: "me-central-1", POOL_LABEL: "cpu", STACK_LABEL: "cpu"})
    return ClusterFacts(nodes=(node,))


def test_a_gguf_path_that_holds_no_model_stalls_the_stack_and_starts_no_replica(
        api_client, namespace, kube, qa, bucket) -> None:
    stack = cpu_stack(api_client, namespace, qa, bucket, "gguf/tiny-v2.gguf")

    (verdict,) = verify_data_stores(kube=kube, stack=stack, create=True, check_models=True)
    facts = with_store_verdicts(node_facts(namespace), stack=stack, verdicts=[verdict])
    desired = render_stack(stack, facts)
    seen = conditions(stack, facts, desired)

    assert verdict.ok, "the store itself is fine: only the model's file is missing"
    assert replicas(desired) == {"chat": 0, "assistant": 1}, "no llama-server replica, so nothing is copied"
    ready, reason, message = seen["ModelsReady"]
    assert (ready, reason) == ("False", ms.MODEL_FILE_MISSING)
    assert message.startswith(f"chat: model chat is not started: {FIELD}: s3://{bucket}/gguf/tiny-v2.gguf "
                              "does not exist")
    assert seen["Ready"][:2] == ("False", ms.MODEL_FILE_MISSING)
    assert seen["Stalled"][:2] == ("True", ms.MODEL_FILE_MISSING)
    assert seen["DataStoresReady"][0] == "True"


def test_a_gguf_file_in_place_starts_the_model(api_client, namespace, kube, qa, bucket) -> None:
    stack = cpu_stack(api_client, namespace, qa, bucket, "gguf/tiny.gguf")

    (verdict,) = verify_data_stores(kube=kube, stack=stack, create=True, check_models=True)
    facts = with_store_verdicts(node_facts(namespace), stack=stack, verdicts=[verdict])
    desired = render_stack(stack, facts)

    assert verdict.models["chat"].reason == ms.MODEL_FILE_PRESENT
    assert replicas(desired) == {"chat": 1, "assistant": 1}
    assert conditions(stack, facts, desired)["Ready"][:2] == ("True", "StackReady")


def test_the_residency_audit_does_not_look_at_model_files(api_client, namespace, kube, qa, bucket) -> None:
    """A missing model file is no residency breach: the audit's verification leaves it alone."""
    stack = cpu_stack(api_client, namespace, qa, bucket, "gguf/tiny-v2.gguf")

    (verdict,) = verify_data_stores(kube=kube, stack=stack, create=False)

    assert verdict.ok and verdict.models == {}


# --- a model vLLM streams from the bucket (loadFormat: RunaiStreamer) -----------------------------


def streamed_stack(api_client, namespace: str, qa: MinioServer, bucket: str, path: str):
    """A GPU stack as the apiserver stores it, its model streamed from ``path`` of the bucket."""
    stack = cpu_stack(api_client, namespace, qa, bucket, "gguf/tiny.gguf")
    document = stack.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"]["nodePools"] = [{"name": "gpu", "provisioner": "Existing",
                                      "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8}}]
    document["spec"]["models"] = [{"name": "chat", "model": "Qwen/Qwen2.5-0.5B", "nodePool": "gpu",
                                   "loadFormat": "RunaiStreamer", "source": {"dataStore": "weights", "path": path}}]
    return parse_stack(document)


def test_a_streamed_model_needs_safetensors_under_its_path(api_client, namespace, kube, qa, bucket) -> None:
    qa.client().put_object(Bucket=bucket, Key="models/qwen/model.safetensors", Body=b"\x08\x00\x00\x00{}")
    streamed = streamed_stack(api_client, namespace, qa, bucket, "models/qwen")

    (verdict,) = verify_data_stores(kube=kube, stack=streamed, create=True, check_models=True)

    assert verdict.models["chat"] == ms.Decision(True, ms.MODEL_FILE_PRESENT,
                                                 f"s3://{bucket}/models/qwen/ holds 1 safetensors file(s)")


def test_a_streamed_model_without_safetensors_is_held_back_naming_what_is_there(
        api_client, namespace, kube, qa, bucket) -> None:
    for key in ("models/llama/config.json", "models/llama/pytorch_model.bin"):
        qa.client().put_object(Bucket=bucket, Key=key, Body=b"{}")
    streamed = streamed_stack(api_client, namespace, qa, bucket, "models/llama")

    (verdict,) = verify_data_stores(kube=kube, stack=streamed, create=True, check_models=True)
    facts = with_store_verdicts(ClusterFacts(), stack=streamed, verdicts=[verdict])
    (deployment,) = [o for o in render_stack(streamed, facts)
                     if o["kind"] == "Deployment" and o["metadata"]["name"] == "chat"]

    assert verdict.models["chat"] == ms.Decision(False, ms.MODEL_NOT_SAFETENSORS, (
        f"{FIELD}: loadFormat RunaiStreamer streams safetensors, and s3://{bucket}/models/llama/ holds none "
        "(it holds models/llama/config.json, models/llama/pytorch_model.bin): upload the model in safetensors "
        f"there, set {FIELD} to where it is, or set loadFormat: Copy"))
    assert deployment["spec"]["replicas"] == 0, "held back: no replica starts, nothing is streamed"
