"""Residency checks of one bucket: location, encryption, versioning, public access, replication."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.policy import residency_store as rs
from sovereign.stores.readings import (
    BucketReadings,
    Encryption,
    PublicAccess,
    PublicAccessBlock,
    ReplicationDestination,
    Unsupported,
    Versioning,
)

regions = st.sampled_from(["me-central-1", "eu-west-1", "us-east-1", "ap-south-1", "il-central-1"])
NO_PAB = Unsupported(operation="GetPublicAccessBlock",
                     message="A header you provided implies functionality that is not implemented")
OPEN = PublicAccessBlock(False, False, False, False)
CLOSED = PublicAccessBlock(True, True, True, True)


def readings(**overrides) -> BucketReadings:
    """A compliant bucket in me-central-1, as a MinIO server with a KMS reports it."""
    base = dict(bucket="qa-corpus", exists=True, location="me-central-1",
                encryption=Encryption(algorithm="AES256"), versioning=Versioning.ENABLED,
                public_access=PublicAccess(block=NO_PAB, policy_grants=(), acl_grants=()),
                replication=())
    return BucketReadings(**{**base, **overrides})


def test_a_compliant_bucket_passes_every_check_with_its_reason():
    results = rs.evaluate_bucket(readings=readings(), allowed_regions=["me-central-1"],
                                 require_versioning=True)
    assert {name: (d.ok, d.reason) for name, d in results.items()} == {
        rs.EXISTS: (True, rs.BUCKET_PRESENT),
        rs.LOCATION: (True, rs.LOCATION_IN_REGIONS),
        rs.ENCRYPTION: (True, rs.ENCRYPTION_ON),
        rs.VERSIONING: (True, rs.VERSIONING_ENABLED),
        rs.PUBLIC_ACCESS: (True, rs.NO_PUBLIC_GRANTS),
        rs.REPLICATION: (True, rs.NO_REPLICATION),
    }
    assert rs.summarize(results).ok and rs.summarize(results).reason == rs.COMPLIANT


def test_a_missing_bucket_is_the_only_result():
    results = rs.evaluate_bucket(readings=BucketReadings(bucket="qa-corpus", exists=False),
                                 allowed_regions=["me-central-1"])
    assert list(results) == [rs.EXISTS]
    decision = results[rs.EXISTS]
    assert (decision.ok, decision.reason) == (False, rs.BUCKET_MISSING)
    assert "'qa-corpus' does not exist" in decision.message and "me-central-1" in decision.message


@settings(deadline=None)
@given(location=regions, allowed=st.lists(regions, max_size=3, unique=True))
def test_location_passes_exactly_when_it_is_an_allowed_region(location, allowed):
    decision = rs.check_location(bucket="b", location=location, allowed_regions=allowed)
    assert decision.ok is (location in allowed)
    assert decision.reason == (rs.LOCATION_IN_REGIONS if decision.ok else rs.LOCATION_OUTSIDE_REGIONS)
    assert location in decision.message


def test_location_outside_names_the_region_the_allowed_ones_and_the_fix():
    decision = rs.check_location(bucket="qa-corpus", location="eu-west-1",
                                 allowed_regions=["me-central-1"])
    assert decision == rs.Decision(
        False, rs.LOCATION_OUTSIDE_REGIONS,
        "bucket 'qa-corpus' is in eu-west-1, outside the allowed regions (me-central-1): "
        "use a bucket created in an allowed region")


def test_no_default_encryption_fails_and_says_what_to_set():
    decision = rs.check_encryption(bucket="b", encryption=Encryption(algorithm=None))
    assert (decision.ok, decision.reason) == (False, rs.ENCRYPTION_OFF)
    assert "SSE-S3" in decision.message and "KMS" in decision.message


def test_kms_encryption_names_its_key():
    decision = rs.check_encryption(bucket="b", encryption=Encryption("aws:kms", "arn:aws:kms:k/1"))
    assert decision.ok and "aws:kms with key arn:aws:kms:k/1" in decision.message


def test_an_unsupported_reading_is_never_taken_for_a_pass():
    unsupported = Unsupported(operation="GetBucketEncryption", message="Not Implemented")
    decision = rs.check_encryption(bucket="b", encryption=unsupported)
    assert (decision.ok, decision.reason) == (False, rs.CHECK_UNSUPPORTED)
    assert "does not support GetBucketEncryption (Not Implemented)" in decision.message


@settings(deadline=None)
@given(state=st.sampled_from(list(Versioning)), required=st.booleans())
def test_versioning_fails_only_when_required_and_not_enabled(state, required):
    decision = rs.check_versioning(bucket="b", versioning=state, required=required)
    assert decision.ok is (state is Versioning.ENABLED or not required)
    if not decision.ok:
        assert decision.reason == rs.VERSIONING_OFF and state.value in decision.message


def test_unsupported_versioning_only_matters_when_required():
    unsupported = Unsupported(operation="GetBucketVersioning", message="no")
    assert rs.check_versioning(bucket="b", versioning=unsupported, required=False).ok
    assert rs.check_versioning(bucket="b", versioning=unsupported,
                               required=True).reason == rs.CHECK_UNSUPPORTED


def test_an_anonymous_policy_grant_makes_a_bucket_public():
    access = PublicAccess(block=NO_PAB, policy_grants=("s3:GetObject",), acl_grants=())
    decision = rs.check_public_access(bucket="b", access=access)
    assert (decision.ok, decision.reason) == (False, rs.PUBLIC_ACCESS_ALLOWED)
    assert "bucket policy allows s3:GetObject" in decision.message


def test_a_public_acl_grant_makes_a_bucket_public():
    access = PublicAccess(block=OPEN, policy_grants=(), acl_grants=("AllUsers:READ",))
    decision = rs.check_public_access(bucket="b", access=access)
    assert decision.reason == rs.PUBLIC_ACCESS_ALLOWED
    assert "bucket ACL allows AllUsers:READ" in decision.message


def test_a_full_block_wins_over_any_grant_or_unreadable_part():
    access = PublicAccess(block=CLOSED, policy_grants=("s3:GetObject",),
                          acl_grants=Unsupported(operation="GetBucketAcl", message="no"))
    assert rs.check_public_access(bucket="b", access=access).reason == rs.PUBLIC_ACCESS_BLOCKED


def test_each_block_switch_disarms_only_its_own_source():
    policy_restricted = PublicAccessBlock(False, False, False, True)
    access = PublicAccess(block=policy_restricted, policy_grants=("s3:GetObject",),
                          acl_grants=("AllUsers:READ",))
    decision = rs.check_public_access(bucket="b", access=access)
    assert decision.reason == rs.PUBLIC_ACCESS_ALLOWED
    assert "ACL" in decision.message and "s3:GetObject" not in decision.message


def test_public_access_is_unsupported_when_a_live_source_cannot_be_read():
    access = PublicAccess(block=NO_PAB, policy_grants=Unsupported("GetBucketPolicy", "nope"),
                          acl_grants=())
    decision = rs.check_public_access(bucket="b", access=access)
    assert (decision.ok, decision.reason) == (False, rs.CHECK_UNSUPPORTED)
    assert "GetBucketPolicy" in decision.message


def test_no_grants_on_a_server_without_public_access_blocks_says_so():
    decision = rs.check_public_access(bucket="b", access=PublicAccess(NO_PAB, (), ()))
    assert decision.ok and decision.reason == rs.NO_PUBLIC_GRANTS
    assert "does not support GetPublicAccessBlock" in decision.message


destinations = st.lists(
    st.builds(ReplicationDestination, rule_id=st.text(max_size=5),
              bucket_arn=st.from_regex(r"arn:aws:s3:::[a-z]{3,10}", fullmatch=True),
              region=st.one_of(st.none(), regions)),
    max_size=4)


@settings(deadline=None)
@given(dests=destinations, allowed=st.lists(regions, min_size=1, max_size=3, unique=True))
def test_replication_passes_only_when_every_destination_is_known_and_allowed(dests, allowed):
    decision = rs.check_replication(bucket="b", destinations=dests, allowed_regions=allowed)
    outside = [d for d in dests if d.region is not None and d.region not in allowed]
    unknown = [d for d in dests if d.region is None]
    assert decision.ok is (not outside and not unknown)
    if outside:
        assert decision.reason == rs.REPLICATION_OUTSIDE_REGIONS
        assert all(d.bucket_arn in decision.message for d in outside)
    elif unknown:
        assert decision.reason == rs.REPLICATION_REGION_UNKNOWN
    else:
        assert decision.reason == (rs.REPLICATION_IN_REGIONS if dests else rs.NO_REPLICATION)


def test_replication_outside_names_destination_and_region():
    dest = ReplicationDestination(rule_id="r1", bucket_arn="arn:minio:replication:eu-west-1:x:copy",
                                  region="eu-west-1")
    decision = rs.check_replication(bucket="qa-corpus", destinations=[dest],
                                    allowed_regions=["me-central-1"])
    assert decision.reason == rs.REPLICATION_OUTSIDE_REGIONS
    assert "replicates to arn:minio:replication:eu-west-1:x:copy in eu-west-1" in decision.message


def test_summary_reports_the_first_failure_reason_and_every_failure_message():
    results = rs.evaluate_bucket(
        readings=readings(location="eu-west-1", encryption=Encryption(algorithm=None)),
        allowed_regions=["me-central-1"])
    summary = rs.summarize(results)
    assert (summary.ok, summary.reason) == (False, rs.LOCATION_OUTSIDE_REGIONS)
    assert "eu-west-1" in summary.message and "no default encryption" in summary.message


def test_readings_not_taken_are_not_checked():
    results = rs.evaluate_bucket(readings=BucketReadings(bucket="b", exists=True, location="me-central-1"),
                                 allowed_regions=["me-central-1"])
    assert list(results) == [rs.EXISTS, rs.LOCATION]
