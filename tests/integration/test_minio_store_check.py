"""Residency checks of real buckets: one MinIO server in the allowed region, one outside it."""

from __future__ import annotations

import json

import pytest

from sovereign_dev.minio import MinioServer
from sovereign.policy import residency_store as rs
from sovereign.services.store_check import check_store
from sovereign.stores.credentials import Credentials
from sovereign.stores.readings import ReplicationDestination, Unsupported
from sovereign.stores.s3 import S3Store

pytestmark = pytest.mark.minio
ALLOWED = ["me-central-1"]


def store_of(server: MinioServer, *, region: str | None = None) -> S3Store:
    """A store client for ``server``; ``region`` is what a stack's spec claims for it."""
    return S3Store(endpoint=server.endpoint, region=region or server.region,
                   credentials=Credentials(access_key_id=server.access_key,
                                           secret_access_key=server.secret_key),
                   path_style=True)


def reasons(check) -> dict[str, str]:
    return {name: decision.reason for name, decision in check.results.items()}


def test_an_encrypted_private_bucket_in_the_allowed_region_is_compliant(minio_servers,
                                                                        minio_bucket_name):
    store = store_of(minio_servers["me-central-1"])
    store.create_bucket(bucket=minio_bucket_name, region="me-central-1", encryption=True,
                        versioning=True)

    check = check_store(store=store, bucket=minio_bucket_name, allowed_regions=ALLOWED,
                        require_versioning=True)

    assert reasons(check) == {
        rs.EXISTS: rs.BUCKET_PRESENT, rs.LOCATION: rs.LOCATION_IN_REGIONS,
        rs.ENCRYPTION: rs.ENCRYPTION_ON, rs.VERSIONING: rs.VERSIONING_ENABLED,
        rs.PUBLIC_ACCESS: rs.NO_PUBLIC_GRANTS, rs.REPLICATION: rs.NO_REPLICATION,
    }
    assert check.summary.ok and check.summary.reason == rs.COMPLIANT
    # MinIO has no public-access block: shown as unsupported, not as a block that is on.
    assert isinstance(check.readings.public_access.block, Unsupported)
    assert "does not support GetPublicAccessBlock" in check.results[rs.PUBLIC_ACCESS].message


def test_a_bucket_on_the_out_of_region_server_fails_location(minio_servers, minio_bucket_name):
    store = store_of(minio_servers["eu-west-1"])
    store.create_bucket(bucket=minio_bucket_name, region="eu-west-1", encryption=True,
                        versioning=False)

    check = check_store(store=store, bucket=minio_bucket_name, allowed_regions=ALLOWED)

    location = check.results[rs.LOCATION]
    assert (location.ok, location.reason) == (False, rs.LOCATION_OUTSIDE_REGIONS)
    assert location.message == (f"bucket {minio_bucket_name!r} is in eu-west-1, outside the allowed "
                                "regions (me-central-1): use a bucket created in an allowed region")
    assert check.summary.reason == rs.LOCATION_OUTSIDE_REGIONS


def test_a_store_that_claims_an_allowed_region_is_judged_by_where_it_is(minio_servers,
                                                                        minio_bucket_name):
    eu = minio_servers["eu-west-1"]
    eu.client().create_bucket(Bucket=minio_bucket_name)

    check = check_store(store=store_of(eu, region="me-central-1"), bucket=minio_bucket_name,
                        allowed_regions=ALLOWED)

    assert check.readings.location == "eu-west-1"
    assert check.results[rs.LOCATION].reason == rs.LOCATION_OUTSIDE_REGIONS


def test_a_missing_bucket_is_reported_not_raised(minio_servers, minio_bucket_name):
    check = check_store(store=store_of(minio_servers["me-central-1"]), bucket=minio_bucket_name,
                        allowed_regions=ALLOWED)
    assert reasons(check) == {rs.EXISTS: rs.BUCKET_MISSING}
    assert not check.summary.ok


def test_anonymous_read_and_no_encryption_are_violations(minio_server_without_kms,
                                                         minio_bucket_name):
    server = minio_server_without_kms
    server.client().create_bucket(Bucket=minio_bucket_name)
    server.client().put_bucket_policy(Bucket=minio_bucket_name, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{minio_bucket_name}/*"]}]}))

    check = check_store(store=store_of(server), bucket=minio_bucket_name, allowed_regions=ALLOWED)

    assert reasons(check)[rs.ENCRYPTION] == rs.ENCRYPTION_OFF
    public = check.results[rs.PUBLIC_ACCESS]
    assert (public.ok, public.reason) == (False, rs.PUBLIC_ACCESS_ALLOWED)
    assert "bucket policy allows s3:GetObject" in public.message
    assert check.summary.reason == rs.ENCRYPTION_OFF


def test_replication_to_the_out_of_region_server_is_a_violation(minio_servers, minio_bucket_name):
    me, eu = minio_servers["me-central-1"], minio_servers["eu-west-1"]
    for server in (me, eu):
        store_of(server).create_bucket(bucket=minio_bucket_name, region=server.region,
                                       encryption=True, versioning=True)
    arn = me.add_replication_target(bucket=minio_bucket_name, target=eu,
                                    target_bucket=minio_bucket_name)
    me.client().put_bucket_replication(Bucket=minio_bucket_name, ReplicationConfiguration={
        "Role": "", "Rules": [{"ID": "to-eu", "Status": "Enabled", "Priority": 1,
                               "Filter": {"Prefix": ""},
                               "DeleteMarkerReplication": {"Status": "Disabled"},
                               "Destination": {"Bucket": arn}}]})

    check = check_store(store=store_of(me), bucket=minio_bucket_name, allowed_regions=ALLOWED)

    assert check.readings.replication == (
        ReplicationDestination(rule_id="to-eu", bucket_arn=arn, region="eu-west-1"),)
    replication = check.results[rs.REPLICATION]
    assert (replication.ok, replication.reason) == (False, rs.REPLICATION_OUTSIDE_REGIONS)
    assert f"replicates to {arn} in eu-west-1" in replication.message
    assert check.results[rs.LOCATION].ok
