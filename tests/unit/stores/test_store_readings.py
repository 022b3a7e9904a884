"""S3 quirks normalised once: bucket locations, ETag shapes, public bucket policies."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.stores.readings import (
    ObjectHead,
    ObjectInfo,
    anonymous_policy_grants,
    etag_is_md5_based,
    normalize_location,
)

region_names = st.from_regex(r"[a-z]{2}(-[a-z]+)+-[0-9]", fullmatch=True)
md5_hex = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


@pytest.mark.parametrize("constraint", [None, "", "  "])
def test_no_location_constraint_means_us_east_1(constraint):
    assert normalize_location(constraint) == "us-east-1"


def test_legacy_eu_constraint_means_eu_west_1():
    assert normalize_location("EU") == "eu-west-1"


@settings(deadline=None)
@given(region_names)
def test_a_region_name_is_its_own_location(region):
    assert normalize_location(region) == region


@settings(deadline=None)
@given(st.one_of(st.none(), st.text(max_size=30)))
def test_normalising_is_idempotent(constraint):
    once = normalize_location(constraint)
    assert normalize_location(once) == once


@settings(deadline=None)
@given(region_names)
def test_case_and_whitespace_do_not_change_the_region(region):
    assert normalize_location(f" {region.upper()}\n") == region


@settings(deadline=None)
@given(md5_hex, st.integers(min_value=1, max_value=10_000))
def test_parts_count_is_read_from_a_multipart_etag(digest, parts):
    assert ObjectInfo(key="k", size=1, etag=f"{digest}-{parts}").parts_count == parts
    assert ObjectInfo(key="k", size=1, etag=digest).parts_count is None


@pytest.mark.parametrize(("sse", "customer_key", "usable"), [
    (None, False, True),
    ("AES256", False, True),
    ("aws:kms", False, False),
    ("aws:kms:dsse", False, False),
    (None, True, False),
])
def test_only_unencrypted_and_sse_s3_etags_verify_content(sse, customer_key, usable):
    head = ObjectHead(key="k", size=3, etag="900150983cd24fb0d6963f7d28e17f72",
                      server_side_encryption=sse, customer_key=customer_key)
    assert head.etag_is_content_md5 is usable


@pytest.mark.parametrize("etag", ["", "abc", "900150983cd24fb0d6963f7d28e17f72-", "Z" * 32])
def test_etags_not_shaped_like_md5_are_not_used_for_verification(etag):
    assert not etag_is_md5_based(etag)


def _policy(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.mark.parametrize("principal", ["*", {"AWS": "*"}, {"AWS": ["*"]}])
def test_every_spelling_of_anyone_makes_a_grant_public(principal):
    document = _policy({"Effect": "Allow", "Principal": principal,
                        "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "arn:aws:s3:::b/*"})
    assert anonymous_policy_grants(document) == ("s3:GetObject", "s3:ListBucket")


def test_conditional_denied_and_named_principal_statements_are_not_public():
    document = _policy(
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.20.0.0/16"}}},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
         "Action": "s3:PutObject"},
    )
    assert anonymous_policy_grants(document) == ()


def test_a_single_statement_object_is_read_like_a_list():
    document = json.dumps({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}})
    assert anonymous_policy_grants(document) == ("s3:GetObject",)


def test_an_unreadable_policy_is_an_error_not_an_empty_grant():
    with pytest.raises(ValueError):
        anonymous_policy_grants("{not json")
