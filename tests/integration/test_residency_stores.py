"""In-country object stores: each S3 store of a stack verified against real MinIO servers, one
per region, with credentials from a real Secret; workloads of a failed store are held back.

The reconciler consumes these verdicts (``services.residency_stores``); here the service side is
exercised end to end: a stack as the apiserver stores it, its Secret, its buckets.
"""

from __future__ import annotations

import base64
import logging

import pytest
from kubernetes import client
from sovereign.api import GROUP, PLURAL, VERSION, parse_stack
from sovereign_dev.minio import MinioServer
from sovereign.kube.client import Kube
from sovereign.policy import residency_store as rs
from sovereign.policy.residency import STORE_FAILED, blocked_workloads
from sovereign.services.residency_stores import (
    BUCKET_CREATED,
    CREDENTIALS_INVALID,
    CREDENTIALS_SECRET_MISSING,
    verify_data_stores,
)
from sovereign.stores.credentials import Credentials
from sovereign.stores.s3 import S3Store

pytestmark = pytest.mark.minio


@pytest.fixture
def kube(cluster):
    connection = Kube(cluster.api_client())
    yield connection
    connection.close()


def put_secret(api_client, namespace: str, server: MinioServer, name: str = "s3-creds") -> None:
    data = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": name},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}})


def s3(server: MinioServer, bucket: str, **extra) -> dict:
    """A store entry that claims me-central-1 (the only allowed region) whatever server it is on."""
    return {"bucket": bucket, "region": "me-central-1", "endpoint": server.endpoint, "forcePathStyle": True,
            "credentialsSecretRef": {"name": "s3-creds"}, **extra}


def stored_stack(api_client, namespace: str, data_stores: list[dict]):
    """The stack as the apiserver stores it (defaults filled in), parsed."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack",
            "metadata": {"name": "citizen", "namespace": namespace},
            "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"]},
                     "nodePools": [{"name": "h100", "provisioner": "Existing",
                                    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8}}],
                     "dataStores": data_stores,
                     "models": [{"name": "chat", "model": "Qwen/Qwen2.5-7B-Instruct",
                                 "source": {"dataStore": data_stores[0]["name"]}, "nodePool": "h100"}],
                     "applications": [{"name": "assistant", "image": "registry.gov.qa/assistant:1",
                                       "models": ["chat"], "dataStores": [d["name"] for d in data_stores]}]}}
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                  PLURAL, body)
    return parse_stack(created)


def admin_store(server: MinioServer) -> S3Store:
    return S3Store(endpoint=server.endpoint, region=server.region, path_style=True,
                   credentials=Credentials(access_key_id=server.access_key, secret_access_key=server.secret_key))


def test_a_store_on_the_out_of_region_server_fails_location_and_its_workloads_do_not_start(
        api_client, namespace, kube, minio_servers, minio_bucket_name):
    eu = minio_servers["eu-west-1"]
    admin_store(eu).create_bucket(bucket=minio_bucket_name, region="eu-west-1", encryption=True, versioning=False)
    put_secret(api_client, namespace, eu)
    stack = stored_stack(api_client, namespace, [{"name": "corpus", "s3": s3(eu, minio_bucket_name)}])

    verdict, = verify_data_stores(kube=kube, stack=stack, create=True)

    assert (verdict.ok, verdict.decision.reason, verdict.region) == (False, rs.LOCATION_OUTSIDE_REGIONS,
                                                                     "eu-west-1")
    assert verdict.checks[rs.LOCATION].message == (
        f"bucket {minio_bucket_name!r} is in eu-west-1, outside the allowed regions (me-central-1): use a "
        "bucket created in an allowed region")
    status = verdict.status
    assert (status.name, status.ready, status.location, status.region, status.reason) == (
        "corpus", False, f"s3://{minio_bucket_name}", "eu-west-1", rs.LOCATION_OUTSIDE_REGIONS)
    blocked = blocked_workloads(stack=stack, failed_stores={v.name: v.decision for v in [verdict]})
    assert sorted(blocked) == ["assistant", "chat"]
    assert blocked["chat"].reason == STORE_FAILED
    assert blocked["chat"].message.startswith("model chat is not started: data store corpus failed "
                                              "LocationOutsideRegions: ")


def test_a_compliant_store_in_the_region_passes_every_check(api_client, namespace, kube, minio_servers,
                                                           minio_bucket_name):
    qa = minio_servers["me-central-1"]
    admin_store(qa).create_bucket(bucket=minio_bucket_name, region="me-central-1", encryption=True,
                                  versioning=False)
    put_secret(api_client, namespace, qa)
    stack = stored_stack(api_client, namespace, [{"name": "corpus", "s3": s3(qa, minio_bucket_name)}])

    verdict, = verify_data_stores(kube=kube, stack=stack, create=False)

    assert (verdict.ok, verdict.decision.reason, verdict.region) == (True, rs.COMPLIANT, "me-central-1")
    assert {name: d.reason for name, d in verdict.checks.items()} == {
        rs.EXISTS: rs.BUCKET_PRESENT, rs.LOCATION: rs.LOCATION_IN_REGIONS, rs.ENCRYPTION: rs.ENCRYPTION_ON,
        rs.VERSIONING: rs.VERSIONING_NOT_REQUIRED, rs.PUBLIC_ACCESS: rs.NO_PUBLIC_GRANTS,
        rs.REPLICATION: rs.NO_REPLICATION,
    }
    # MinIO has no public-access block: the check says so instead of claiming one is on.
    assert "the server does not support GetPublicAccessBlock" in verdict.checks[rs.PUBLIC_ACCESS].message
    assert blocked_workloads(stack=stack, failed_stores={}) == {}


def test_a_missing_bucket_is_created_in_the_region_only_when_the_store_asks_and_the_caller_may(
        api_client, namespace, kube, minio_servers, minio_bucket_name):
    qa = minio_servers["me-central-1"]
    put_secret(api_client, namespace, qa)
    stack = stored_stack(api_client, namespace, [{"name": "corpus", "s3": s3(qa, minio_bucket_name, create=True)}])

    looked, = verify_data_stores(kube=kube, stack=stack, create=False)
    made, = verify_data_stores(kube=kube, stack=stack, create=True)

    assert (looked.ok, looked.decision.reason) == (False, rs.BUCKET_MISSING)
    assert (made.ok, made.decision.reason, made.region) == (True, BUCKET_CREATED, "me-central-1")
    assert admin_store(qa).bucket_location(bucket=minio_bucket_name) == "me-central-1"


def test_unencrypted_storage_says_which_check_failed(api_client, namespace, kube, minio_server_without_kms,
                                                    minio_bucket_name):
    plain = minio_server_without_kms
    admin_store(plain).create_bucket(bucket=minio_bucket_name, region=plain.region, encryption=False,
                                     versioning=False)
    put_secret(api_client, namespace, plain)
    stack = stored_stack(api_client, namespace, [{"name": "corpus", "s3": s3(plain, minio_bucket_name)}])

    verdict, = verify_data_stores(kube=kube, stack=stack, create=False)

    assert (verdict.ok, verdict.decision.reason) == (False, rs.ENCRYPTION_OFF)
    assert f"bucket {minio_bucket_name!r} has no default encryption" in verdict.decision.message


def test_credentials_problems_are_verdicts_that_never_show_the_keys(api_client, namespace, kube, minio_servers,
                                                                   minio_bucket_name, caplog):
    qa = minio_servers["me-central-1"]
    stack = stored_stack(api_client, namespace, [{"name": "corpus", "s3": s3(qa, minio_bucket_name)}])
    # At DEBUG botocore logs request headers, where the access key id (never the secret) appears.
    caplog.set_level(logging.INFO)

    missing, = verify_data_stores(kube=kube, stack=stack, create=False)
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": "s3-creds"},
        "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(qa.access_key.encode()).decode()}})
    incomplete, = verify_data_stores(kube=kube, stack=stack, create=False)
    client.CoreV1Api(api_client).delete_namespaced_secret("s3-creds", namespace)
    put_secret(api_client, namespace, qa)
    client.CoreV1Api(api_client).patch_namespaced_secret("s3-creds", namespace, {"data": {
        "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"not-the-secret").decode()}})
    rejected, = verify_data_stores(kube=kube, stack=stack, create=False)

    assert (missing.decision.reason, missing.decision.message) == (
        CREDENTIALS_SECRET_MISSING, (f"Secret {namespace}/s3-creds does not exist: create it with the keys "
                                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
    assert incomplete.decision.reason == CREDENTIALS_INVALID
    assert f"AWS_SECRET_ACCESS_KEY not set in Secret {namespace}/s3-creds" in incomplete.decision.message
    assert rejected.decision.reason == "CredentialsRejected"
    for verdict in (missing, incomplete, rejected):
        assert qa.access_key not in verdict.decision.message and qa.secret_key not in verdict.decision.message
    assert qa.access_key not in caplog.text and qa.secret_key not in caplog.text
