"""A data store failing its residency checks keeps the workloads that use it from starting.

Against the local control plane and real MinIO servers of me-central-1 (in the region) and
eu-west-1 (outside it), with the operator as a real ``sovereign run`` process: a stack whose S3
store is a bucket on the eu-west-1 server holds back the model and the application that use it
(their Deployments at zero replicas, ``DataStoresReady=False/LocationOutsideRegions``, the
failed check in ``status.dataStores`` and in the models' and applications' conditions) while the
rest of the stack runs; moving the store to a bucket on the in-region server (a spec edit)
releases them and the stack becomes Ready.

The reconciler's verdict cache (``services.residency_stores.StoreVerdicts``) is exercised in this
process: unchanged spec and credentials, no new verification; a changed Secret, a new one; an
endpoint that stops answering keeps the verdict it had.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from gate_helpers import operator, wait_for  # noqa: F401 - the fixture
from kubernetes import client
from sovereign.api import GROUP, PLURAL, VERSION, parse_stack
from sovereign_dev.minio import MinioServer
from sovereign_dev.scenario import RACK_LABEL, SimulatedCloud, stack_conditions
from sovereign.kube.client import Kube
from sovereign.policy import residency_store as rs
from sovereign.services.residency_stores import StoreVerdicts

STACK = "citizen"
pytestmark = pytest.mark.minio



def _put_secret(api_client, namespace: str, name: str, server: MinioServer) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": name},
        "stringData": {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}})


def _encrypted_bucket(server: MinioServer, bucket: str) -> None:
    s3 = server.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": server.region})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})


def _s3(server: MinioServer, bucket: str, secret: str, **extra: Any) -> dict[str, Any]:
    """A store entry that claims me-central-1 (the only allowed region), whatever server it is on."""
    return {"bucket": bucket, "region": "me-central-1", "endpoint": server.endpoint, "forcePathStyle": True,
            "credentialsSecretRef": {"name": secret}, **extra}


def _document(namespace: str, store: dict[str, Any]) -> dict[str, Any]:
    """A model and an application on the store, and an application that uses no store; the
    model on the simulated cloud's rack of existing GPU nodes."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack",
        "metadata": {"name": STACK, "namespace": namespace},
        "spec": {
            "residency": {"jurisdiction": "QA", "regions": ["me-central-1"], "enforcement": "Enforce"},
            "nodePools": [{"name": "rack", "provisioner": "Existing",
                           "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8},
                           "existing": {"nodeSelector": {RACK_LABEL: "doha-1"}}}],
            "dataStores": [{"name": "corpus", "s3": store}],
            "models": [{"name": "chat", "model": "Qwen/Qwen2.5-7B-Instruct",
                        "source": {"dataStore": "corpus", "path": "models/qwen/"}, "nodePool": "rack",
                        "gpusPerReplica": 1, "replicas": 1}],
            "applications": [
                {"name": "assistant", "image": "registry.gov.qa/assistant:1", "models": ["chat"],
                 "dataStores": ["corpus"]},
                {"name": "portal", "image": "registry.gov.qa/portal:1"},
            ],
        },
    }


@pytest.fixture
def cloud(api_client, namespace: str, minio_servers) -> Iterator[SimulatedCloud]:
    """Rack nodes, volumes for the weights cache, and an encrypted bucket on the in-region server
    with its Secret ``s3-creds``."""
    with SimulatedCloud(api_client, namespace, store=minio_servers["me-central-1"]) as simulated:
        yield simulated






def _stack(api_client, namespace: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK)


def _replicas(api_client, namespace: str) -> dict[str, tuple[int, int]]:
    """Each Deployment's desired and ready replicas."""
    return {d.metadata.name: (d.spec.replicas, d.status.ready_replicas or 0)
            for d in client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items}


def test_a_bucket_outside_the_regions_holds_back_its_workloads_until_the_store_moves_in(
        api_client, namespace, minio_servers, minio_bucket_name, cloud, operator):
    eu, abroad, home = minio_servers["eu-west-1"], minio_bucket_name, cloud.bucket
    _encrypted_bucket(eu, abroad)
    _put_secret(api_client, namespace, "s3-eu", eu)
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _document(namespace, _s3(eu, abroad, "s3-eu")))

    def held_back() -> bool:
        conditions = stack_conditions(api_client, namespace, STACK)
        replicas = _replicas(api_client, namespace)
        return (conditions.get("DataStoresReady", {}).get("reason") == rs.LOCATION_OUTSIDE_REGIONS
                and replicas.get("portal") == (1, 1))

    wait_for("the store's failure in status and portal running", held_back, operator, api_client, namespace, stack=STACK)

    status = _stack(api_client, namespace)["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    location = (f"bucket {abroad!r} is in eu-west-1, outside the allowed regions (me-central-1): use a bucket "
                "created in an allowed region")
    (corpus,) = status["dataStores"]
    assert (corpus["name"], corpus["ready"], corpus["location"], corpus["region"], corpus["reason"]) == (
        "corpus", False, f"s3://{abroad}", "eu-west-1", rs.LOCATION_OUTSIDE_REGIONS)
    assert location in corpus["message"]
    assert conditions["DataStoresReady"]["status"] == "False"
    assert conditions["DataStoresReady"]["message"].startswith("corpus: ")
    assert location in conditions["DataStoresReady"]["message"]
    for condition, workload, kind in (("ModelsReady", "chat", "model"), ("ApplicationsReady", "assistant",
                                                                        "application")):
        assert (conditions[condition]["status"], conditions[condition]["reason"]) == ("False", "DataStoreFailed")
        assert (f"{workload}: {kind} {workload} is not started: data store corpus failed LocationOutsideRegions: "
                in conditions[condition]["message"])
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", rs.LOCATION_OUTSIDE_REGIONS)
    replicas = _replicas(api_client, namespace)
    assert (replicas["chat"], replicas["assistant"], replicas["portal"]) == ((0, 0), (0, 0), (1, 1))
    assert not client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name in "
                                                                                           "(chat, assistant)").items

    stored = _stack(api_client, namespace)
    spec = copy.deepcopy(stored["spec"])
    spec["dataStores"][0]["s3"] = _s3(cloud.store, home, "s3-creds")
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK, {**stored, "spec": spec})

    def ready() -> bool:
        status = _stack(api_client, namespace).get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        return status.get("observedGeneration") == 2 and ready.get("status") == "True"

    wait_for("Ready=True once the store is in the region", ready, operator, api_client, namespace, stack=STACK)
    status = _stack(api_client, namespace)["status"]
    (corpus,) = status["dataStores"]
    assert (corpus["ready"], corpus["location"], corpus["region"], corpus["reason"]) == (
        True, f"s3://{home}", "me-central-1", rs.COMPLIANT)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["ModelsReady"] == ("True", "ModelsAvailable")
    assert conditions["ApplicationsReady"] == ("True", "ApplicationsAvailable")
    assert {m["name"]: m["readyReplicas"] for m in status["models"]} == {"chat": 1}
    replicas = _replicas(api_client, namespace)
    assert (replicas["chat"], replicas["assistant"]) == ((1, 1), (1, 1))


# --- the verdict cache, in this process ------------------------------------------------------------


@pytest.fixture
def kube(cluster) -> Iterator[Kube]:
    connection = Kube(cluster.api_client())
    yield connection
    connection.close()


def _stored_stack(api_client, namespace: str, store: dict[str, Any], *, name: str = STACK):
    """A stack with one S3 store, as the apiserver stores it (uid, generation), parsed."""
    document = _document(namespace, store)
    document["metadata"]["name"] = name
    return parse_stack(client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, document))


def test_verdicts_are_verified_again_only_when_spec_credentials_or_period_say_so(
        api_client, namespace, kube, minio_servers, minio_bucket_name):
    qa = minio_servers["me-central-1"]
    _put_secret(api_client, namespace, "s3-qa", qa)
    stack = _stored_stack(api_client, namespace, _s3(qa, minio_bucket_name, "s3-qa"))
    cached, every_pass = StoreVerdicts(recheck_seconds=3600), StoreVerdicts(recheck_seconds=0)

    (missing,) = cached.verdicts(kube=kube, stack=stack)
    (first,) = every_pass.verdicts(kube=kube, stack=stack)
    _encrypted_bucket(qa, minio_bucket_name)  # behind the operator's back

    assert (missing.decision.reason, first.decision.reason) == (rs.BUCKET_MISSING, rs.BUCKET_MISSING)
    assert cached.verdicts(kube=kube, stack=stack)[0].decision.reason == rs.BUCKET_MISSING  # not asked again
    assert every_pass.verdicts(kube=kube, stack=stack)[0].decision.reason == rs.COMPLIANT  # period over
    client.CoreV1Api(api_client).patch_namespaced_secret("s3-qa", namespace, {
        "metadata": {"annotations": {"rotated": "1"}}})
    assert cached.verdicts(kube=kube, stack=stack)[0].decision.reason == rs.COMPLIANT  # credentials changed


def test_a_store_that_stops_answering_keeps_its_verdict_and_a_new_one_is_held_back(
        api_client, namespace, kube, minio_bucket_name, tmp_path):
    with MinioServer(region="me-central-1", root=tmp_path / "minio") as server:
        _encrypted_bucket(server, minio_bucket_name)
        _put_secret(api_client, namespace, "s3-qa", server)
        known = _stored_stack(api_client, namespace, _s3(server, minio_bucket_name, "s3-qa"))
        stores = StoreVerdicts(recheck_seconds=0)
        (before,) = stores.verdicts(kube=kube, stack=known)
    unknown = _stored_stack(api_client, namespace, _s3(server, minio_bucket_name, "s3-qa"), name="newcomer")

    (after,) = stores.verdicts(kube=kube, stack=known)
    (never,) = stores.verdicts(kube=kube, stack=unknown)

    assert before.decision.reason == rs.COMPLIANT
    assert after == before
    assert (never.ok, never.decision.reason) == (False, "StoreUnreachable")
