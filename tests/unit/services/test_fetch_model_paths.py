"""The model loader's pure parts: prefixes, local paths of keys, the report a user reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.services.fetch_model import (
    MANIFEST_NAME,
    Action,
    FetchError,
    FetchReport,
    FileResult,
    Verification,
    human_bytes,
    normalize_prefix,
    plan_paths,
)
from sovereign.stores.readings import ObjectInfo

segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)


@settings(deadline=None)
@given(st.lists(segment, min_size=1, max_size=4), st.booleans(), st.booleans())
def test_a_path_is_one_prefix_however_slashes_are_written(segments, leading, trailing):
    path = ("/" if leading else "") + "/".join(segments) + ("/" if trailing else "")
    assert normalize_prefix(path) == "/".join(segments) + "/"


@pytest.mark.parametrize("path", ["", "/", "  "])
def test_an_empty_path_is_the_whole_bucket(path):
    assert normalize_prefix(path) == ""


def obj(key: str, size: int = 1) -> ObjectInfo:
    return ObjectInfo(key=key, size=size, etag="0" * 32)


def test_keys_map_to_paths_under_the_destination_and_folder_markers_are_skipped():
    planned = plan_paths(objects=[obj("m/q/"), obj("m/q/config.json"), obj("m/q/sub/tok.json")],
                         prefix="m/q/", source="s3://b/m/q/")
    assert [relative for relative, _ in planned] == ["config.json", "sub/tok.json"]


@pytest.mark.parametrize("key", ["m/q/../../etc/passwd", "m/q/a//b", "m/q/./x", f"m/q/{MANIFEST_NAME}"])
def test_keys_that_would_escape_or_clobber_are_refused_by_name(key):
    with pytest.raises(FetchError) as caught:
        plan_paths(objects=[obj(key)], prefix="m/q/", source="s3://b/m/q/")
    assert repr(key) in str(caught.value) and "rename it in the store" in str(caught.value)


def test_the_summary_counts_each_action_and_the_bytes_moved():
    report = FetchReport(source="s3://b/m/", dest=Path("/models"), files=[
        FileResult("a", 1024, Action.SKIPPED, Verification.MANIFEST),
        FileResult("b", 3 * 1024 * 1024, Action.RESUMED, Verification.ETAG, bytes_downloaded=1024 * 1024),
        FileResult("c", 10, Action.DOWNLOADED, Verification.ETAG, bytes_downloaded=10),
    ])
    assert report.summary() == ("s3://b/m/ -> /models: 3 files, 3.0 MiB (1 skipped, 1 downloaded, "
                                "1 resumed); 1.0 MiB downloaded")
    assert report.paths(Action.SKIPPED) == ["a"]


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                            (5 * 1024**3, "5.0 GiB"), (3 * 1024**5, "3072.0 TiB")])
def test_sizes_read_like_a_person_writes_them(size, text):
    assert human_bytes(size) == text
