"""The MinIO harness: one real server per region, each answering as a store in that region."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from sovereign_dev.minio import MinioServer, MinioStartError

pytestmark = pytest.mark.minio


def test_each_server_reports_its_own_region_as_bucket_location(minio_servers, minio_bucket_name):
    assert sorted(minio_servers) == ["eu-west-1", "me-central-1"]
    for region, server in minio_servers.items():
        client = server.client()
        client.create_bucket(Bucket=minio_bucket_name)
        assert client.get_bucket_location(Bucket=minio_bucket_name)["LocationConstraint"] == region


def test_servers_are_separate_stores_with_their_own_credentials(minio_servers, minio_bucket_name):
    me, eu = minio_servers["me-central-1"], minio_servers["eu-west-1"]
    assert me.endpoint != eu.endpoint and me.access_key != eu.access_key
    me.client().create_bucket(Bucket=minio_bucket_name)
    names = [b["Name"] for b in eu.client().list_buckets()["Buckets"]]
    assert minio_bucket_name not in names


def test_stopping_a_server_ends_its_process_and_frees_its_endpoint(tmp_path):
    server = MinioServer(region="me-central-1", root=tmp_path)
    server.start()
    pid, ready = server.pid, f"{server.endpoint}/minio/health/ready"
    with urllib.request.urlopen(ready, timeout=10) as response:
        assert response.status == 200

    server.stop()
    server.stop()  # idempotent

    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(ready, timeout=10)
    assert "--address 127.0.0.1:" in server.log_path.read_text()


def test_a_server_that_cannot_start_shows_the_tail_of_its_log(tmp_path):
    server = MinioServer(region="me-central-1", root=tmp_path, secret_key="short")
    with pytest.raises(MinioStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "exited with code 1 before it was ready" in message
    assert str(server.log_path) in message
    assert "MINIO_ROOT_PASSWORD length at least 8 characters" in message
    assert not server.running


def test_a_restarted_server_keeps_its_data_and_kms_key(tmp_path, minio_bucket_name):
    server = MinioServer(region="eu-west-1", root=tmp_path, access_key="restart-user",
                         secret_key="restart-secret-key")
    with server:
        client = server.client()
        client.create_bucket(Bucket=minio_bucket_name)
        client.put_object(Bucket=minio_bucket_name, Key="k", Body=b"kept", ServerSideEncryption="AES256")
    with server:
        body = server.client().get_object(Bucket=minio_bucket_name, Key="k")["Body"].read()
    assert body == b"kept"
