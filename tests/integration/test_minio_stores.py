"""``stores.s3.S3Store`` against real MinIO servers: readings, creation, streaming, errors."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket

import pytest
from boto3.s3.transfer import TransferConfig

from sovereign_dev.minio import MinioServer
from sovereign.stores import errors
from sovereign.stores.credentials import Credentials
from sovereign.stores.readings import (
    Encryption,
    ObjectInfo,
    Unsupported,
    Versioning,
)
from sovereign.stores.s3 import S3Store

pytestmark = pytest.mark.minio
MiB = 1024 * 1024


def store_of(server: MinioServer, *, access_key: str | None = None,
             secret_key: str | None = None) -> S3Store:
    credentials = Credentials(access_key_id=access_key or server.access_key,
                              secret_access_key=secret_key or server.secret_key)
    return S3Store(endpoint=server.endpoint, region=server.region, credentials=credentials,
                   path_style=True)


@pytest.fixture
def me(minio_servers) -> MinioServer:
    return minio_servers["me-central-1"]


@pytest.fixture
def bucket(me, minio_bucket_name) -> str:
    me.client().create_bucket(Bucket=minio_bucket_name)
    return minio_bucket_name


def test_lists_objects_under_a_prefix_with_sizes_and_etags(me, bucket):
    client = me.client()
    for key, body in (("m/q/config.json", b"{}"), ("m/q/sub/w.bin", b"w" * 1000), ("m/other", b"x")):
        client.put_object(Bucket=bucket, Key=key, Body=body)

    listed = store_of(me).list_objects(bucket=bucket, prefix="m/q/")

    assert [(o.key, o.size, o.etag) for o in listed] == [
        ("m/q/config.json", 2, hashlib.md5(b"{}").hexdigest()),
        ("m/q/sub/w.bin", 1000, hashlib.md5(b"w" * 1000).hexdigest()),
    ]
    assert store_of(me).list_prefixes(bucket=bucket, prefix="m/") == ["m/q/"]


def test_creates_a_bucket_in_its_region_encrypted_and_versioned(me, minio_bucket_name):
    store = store_of(me)
    setup = store.create_bucket(bucket=minio_bucket_name, region="me-central-1",
                                encryption=True, versioning=True)
    assert (setup.created, setup.location) == (True, "me-central-1")
    assert setup.encryption == Encryption(algorithm="AES256")
    assert setup.versioning is Versioning.ENABLED

    again = store.create_bucket(bucket=minio_bucket_name, region="me-central-1",
                                encryption=True, versioning=True)
    assert again.created is False and again.encryption == setup.encryption


def test_default_encryption_is_unsupported_on_a_server_without_kms(minio_server_without_kms,
                                                                   minio_bucket_name):
    store = store_of(minio_server_without_kms)
    setup = store.create_bucket(bucket=minio_bucket_name, region="me-central-1",
                                encryption=True, versioning=True)
    assert setup.encryption == Unsupported(
        operation="PutBucketEncryption",
        message="Server side encryption specified but KMS is not configured")
    assert setup.versioning is Versioning.ENABLED
    # Reading works there: the bucket simply has no default encryption.
    assert store.default_encryption(bucket=minio_bucket_name) == Encryption(algorithm=None)


def test_a_bucket_for_another_region_is_refused_with_the_servers_region(me, minio_bucket_name):
    with pytest.raises(errors.RegionMismatch) as caught:
        store_of(me).create_bucket(bucket=minio_bucket_name, region="eu-west-1",
                                   encryption=False, versioning=False)
    assert caught.value.server_region == "me-central-1"
    assert "InvalidRegion" in str(caught.value) and "expecting 'me-central-1'" in str(caught.value)


def test_public_access_block_is_unsupported_and_bucket_policy_grants_are_read(me, bucket):
    store = store_of(me)
    access = store.public_access(bucket=bucket)
    assert isinstance(access.block, Unsupported) and access.block.operation == "GetPublicAccessBlock"
    assert (access.policy_grants, access.acl_grants) == ((), ())

    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}
    me.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    assert store.public_access(bucket=bucket).policy_grants == ("s3:GetObject",)


def test_versioning_reads_off_until_enabled(me, bucket):
    store = store_of(me)
    assert store.versioning(bucket=bucket) is Versioning.OFF
    me.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert store.versioning(bucket=bucket) is Versioning.SUSPENDED


def test_a_missing_bucket_is_an_error_naming_it_and_the_fix(me, minio_bucket_name):
    store = store_of(me)
    for call in (lambda: store.list_objects(bucket=minio_bucket_name, prefix=""),
                 lambda: store.bucket_location(bucket=minio_bucket_name)):
        with pytest.raises(errors.BucketNotFound) as caught:
            call()
        assert f"bucket {minio_bucket_name!r} at {me.endpoint}: NoSuchBucket" in str(caught.value)
        assert "Check the bucket name" in str(caught.value)


@pytest.mark.parametrize("wrong", ["access", "secret"])
def test_rejected_credentials_are_reported_without_showing_them(me, bucket, wrong, caplog):
    caplog.set_level(logging.DEBUG, logger="sovereign")
    access_key = "sovereign-wrong-access-key" if wrong == "access" else me.access_key
    secret_key = "sovereign-wrong-secret-key" if wrong == "secret" else me.secret_key
    store = store_of(me, access_key=access_key, secret_key=secret_key)

    with pytest.raises(errors.CredentialsRejected) as caught:
        store.list_objects(bucket=bucket, prefix="")

    shown = " ".join([str(caught.value), repr(caught.value), repr(store), caplog.text])
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    for value in (access_key, secret_key, me.secret_key):
        assert value not in shown


def test_an_unreachable_endpoint_says_to_check_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = S3Store(endpoint=f"http://127.0.0.1:{port}", region="me-central-1",
                    credentials=Credentials(access_key_id="a" * 8, secret_access_key="b" * 8),
                    path_style=True)
    with pytest.raises(errors.StoreUnreachable, match="Check the endpoint URL"):
        store.bucket_location(bucket="anything")


def test_ranged_reads_give_the_bytes_asked_for_and_never_stitch_two_versions(me, bucket):
    data = bytes(range(256)) * 40
    etag = me.client().put_object(Bucket=bucket, Key="w.bin", Body=data)["ETag"].strip('"')
    store = store_of(me)

    assert b"".join(store.read_range(bucket=bucket, key="w.bin", etag=etag, start=100,
                                     end=5000)) == data[100:5000]
    assert b"".join(store.read_range(bucket=bucket, key="w.bin", etag=etag, start=10000,
                                     end=len(data))) == data[10000:]

    me.client().put_object(Bucket=bucket, Key="w.bin", Body=b"replaced" * 2000)
    with pytest.raises(errors.ObjectChanged, match="run again to fetch the new version"):
        b"".join(store.read_range(bucket=bucket, key="w.bin", etag=etag, start=100, end=200))


def test_part_sizes_of_even_and_uneven_multipart_uploads(me, bucket):
    client, store = me.client(), store_of(me)
    client.upload_fileobj(io.BytesIO(b"e" * (11 * MiB)), bucket, "even",
                          Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    even = store.list_objects(bucket=bucket, prefix="even")[0]
    assert even.parts_count == 3
    assert store.part_sizes(bucket=bucket, key="even", size=even.size, parts_count=3) == [
        5 * MiB, 5 * MiB, 1 * MiB]

    upload = client.create_multipart_upload(Bucket=bucket, Key="uneven")["UploadId"]
    parts = []
    for number, size in enumerate((6 * MiB, 5 * MiB, 1024), start=1):
        etag = client.upload_part(Bucket=bucket, Key="uneven", UploadId=upload, PartNumber=number,
                                  Body=b"u" * size)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(Bucket=bucket, Key="uneven", UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    uneven: ObjectInfo = store.list_objects(bucket=bucket, prefix="uneven")[0]
    assert store.part_sizes(bucket=bucket, key="uneven", size=uneven.size, parts_count=3) == [
        6 * MiB, 5 * MiB, 1024]


def test_object_head_tells_whether_the_etag_is_a_content_md5(me, bucket):
    client = me.client()
    client.put_object(Bucket=bucket, Key="plain", Body=b"abc")
    client.put_object(Bucket=bucket, Key="sse-s3", Body=b"abc", ServerSideEncryption="AES256")
    store = store_of(me)
    for key in ("plain", "sse-s3"):
        head = store.head_object(bucket=bucket, key=key)
        assert head.etag == hashlib.md5(b"abc").hexdigest() and head.etag_is_content_md5
    assert store.head_object(bucket=bucket, key="sse-s3").server_side_encryption == "AES256"

