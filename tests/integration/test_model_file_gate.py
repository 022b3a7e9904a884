"""A llama-cpp model whose GGUF path holds no model is held back by the operator until it does.

Against the local control plane, a real MinIO server of me-central-1 and the operator as a real
``sovereign run`` process: a CPU stack (a pool of the fleet's CPU nodes, a llama-cpp model, an
application) whose ``source.path`` names a GGUF file that is not in the bucket runs no replica of
the model (nothing is copied, nothing served) and reports ``ModelsReady=False`` and
``Stalled=True`` with reason ``ModelFileMissing``, the message and an Event naming
``spec.models[0].source.path``; once the file is uploaded, the next re-check starts the model and
the stack becomes Ready. KWOK runs the pods (no container really starts here: the real node's
tests run llama-server itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gate_helpers import cpu_cloud, cpu_stack, operator, wait_for  # noqa: F401 - the fixture
from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign.policy import model_source as ms
from sovereign_dev.scenario import SimulatedCloud, stack_conditions

STACK = "cpu"
KEY = "gguf/tiny.gguf"
FIELD = "spec.models[0].source.path"
pytestmark = pytest.mark.minio


@pytest.fixture
def cloud(api_client, namespace: str, minio_servers) -> Iterator[SimulatedCloud]:
    with cpu_cloud(api_client, namespace, minio_servers["me-central-1"]) as simulated:
        yield simulated


def _document(namespace: str, cloud: SimulatedCloud) -> dict[str, Any]:
    return cpu_stack(name=STACK, namespace=namespace, cloud=cloud, key=KEY, cache={"size": "1Gi"},
                     applications=[{"name": "assistant", "image": "registry.gov.qa/assistant:1", "models": ["chat"]}])


def _replicas(api_client, namespace: str) -> dict[str, tuple[int, int]]:
    return {d.metadata.name: (d.spec.replicas, d.status.ready_replicas or 0)
            for d in client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items}


def test_a_missing_gguf_file_holds_the_model_back_until_it_is_uploaded(api_client, namespace, cloud, operator):
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _document(namespace, cloud))

    def stalled() -> bool:
        conditions = stack_conditions(api_client, namespace, STACK)
        return (conditions.get("Stalled", {}).get("reason") == ms.MODEL_FILE_MISSING
                and _replicas(api_client, namespace).get("assistant") == (1, 1))

    wait_for("Stalled with ModelFileMissing", stalled, operator, api_client, namespace, stack=STACK)

    conditions = stack_conditions(api_client, namespace, STACK)
    missing = f"chat: model chat is not started: {FIELD}: s3://{cloud.bucket}/{KEY} does not exist"
    assert (conditions["ModelsReady"]["status"], conditions["ModelsReady"]["reason"]) == ("False",
                                                                                          ms.MODEL_FILE_MISSING)
    assert conditions["ModelsReady"]["message"].startswith(missing)
    assert conditions["ModelsReady"]["message"].endswith(f"set {FIELD} to the key of one")
    assert (conditions["Ready"]["status"], conditions["Stalled"]["status"]) == ("False", "True")
    assert conditions["DataStoresReady"]["status"] == "True", "the bucket itself passes its checks"
    assert _replicas(api_client, namespace)["chat"] == (0, 0)
    assert not client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/name=chat").items, "no loader ran, nothing was copied"
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert any(e.reason == ms.MODEL_FILE_MISSING and FIELD in (e.message or "") for e in events)

    cloud.store.client().put_object(Bucket=cloud.bucket, Key=KEY, Body=b"GGUF" + bytes(1024))

    def ready() -> bool:
        status = stack_conditions(api_client, namespace, STACK)
        return status.get("Ready", {}).get("status") == "True"

    wait_for("Ready once the GGUF file is in the bucket", ready, operator, api_client, namespace, stack=STACK)
    assert _replicas(api_client, namespace)["chat"] == (1, 1)
    assert stack_conditions(api_client, namespace, STACK)["ModelsReady"]["reason"] == "ModelsAvailable"
