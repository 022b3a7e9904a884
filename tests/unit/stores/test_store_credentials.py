"""Credentials are read from a Secret or the environment and never print themselves."""

from __future__ import annotations

import pytest

from sovereign.stores.credentials import Credentials
from sovereign.stores.errors import MissingCredentials

ACCESS = "AKIAEXAMPLEACCESS0001"
SECRET = "s3cr3t/EXAMPLE+key/that-must-never-show"


def test_repr_and_str_hide_every_value():
    credentials = Credentials(access_key_id=ACCESS, secret_access_key=SECRET, session_token="tok-123")
    for text in (repr(credentials), str(credentials), f"{credentials}", repr([credentials])):
        assert ACCESS not in text and SECRET not in text and "tok-123" not in text
        assert "redacted" in text


def test_reads_the_keys_a_secret_injects():
    credentials = Credentials.from_mapping(
        {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}, source="the environment")
    assert credentials == Credentials(access_key_id=ACCESS, secret_access_key=SECRET)


def test_a_missing_key_is_named_with_where_it_was_looked_for():
    with pytest.raises(MissingCredentials) as caught:
        Credentials.from_mapping({"AWS_ACCESS_KEY_ID": ACCESS}, source="Secret gov-qa/s3-creds")
    message = str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY not set in Secret gov-qa/s3-creds" in message
    assert ACCESS not in message


def test_no_keys_at_all_means_ambient_credentials_when_they_are_optional():
    assert Credentials.from_mapping({}, source="the environment", required=False) is None
    with pytest.raises(MissingCredentials, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"):
        Credentials.from_mapping({}, source="Secret gov-qa/s3-creds")


def test_half_a_key_pair_is_an_error_even_when_credentials_are_optional():
    with pytest.raises(MissingCredentials, match="AWS_ACCESS_KEY_ID not set in the environment"):
        Credentials.from_mapping({"AWS_SECRET_ACCESS_KEY": SECRET}, source="the environment",
                                 required=False)


def test_the_loader_reads_the_variables_named_like_the_secret_keys():
    """A data store's Secret is injected as the loader's environment key for key."""
    from sovereign.api.models import S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY
    from sovereign.stores.credentials import ACCESS_KEY_ENV, SECRET_KEY_ENV

    assert (ACCESS_KEY_ENV, SECRET_KEY_ENV) == (S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY)
