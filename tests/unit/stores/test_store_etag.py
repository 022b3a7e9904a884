"""S3 ETags recomputed locally, for single-part and multipart uploads, however bytes arrive."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.stores.etag import ETagHasher, file_etag, part_size_from_count, uniform_part_sizes


def s3_multipart_etag(data: bytes, part_sizes: list[int]) -> str:
    """The ETag S3 documents for a multipart upload: MD5 of the part MD5s, dash, part count."""
    digests, offset = [], 0
    for size in part_sizes:
        digests.append(hashlib.md5(data[offset:offset + size]).digest())
        offset += size
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(part_sizes)}"


def feed_in_pieces(hasher: ETagHasher, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        hasher.update(data[start:cut])
        start = cut


@settings(deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_single_part_etag_is_the_md5_however_the_bytes_are_split(data, cuts):
    hasher = ETagHasher(part_sizes=None)
    feed_in_pieces(hasher, data, cuts)
    assert hasher.hexdigest() == hashlib.md5(data).hexdigest()


@settings(deadline=None)
@given(st.data())
def test_multipart_etag_matches_s3s_definition_for_any_split(draw):
    part_sizes = draw.draw(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=6))
    data = draw.draw(st.binary(min_size=sum(part_sizes), max_size=sum(part_sizes)))
    cuts = draw.draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=10))
    hasher = ETagHasher(part_sizes=part_sizes)
    feed_in_pieces(hasher, data, cuts)
    assert hasher.hexdigest() == s3_multipart_etag(data, part_sizes)


@settings(deadline=None)
@given(st.binary(min_size=10, max_size=200), st.integers(min_value=-5, max_value=5).filter(bool))
def test_a_file_shorter_or_longer_than_its_parts_never_matches(data, delta):
    part_sizes = [len(data) // 2, len(data) - len(data) // 2]
    expected = s3_multipart_etag(data, part_sizes)
    changed = data[:delta] if delta < 0 else data + b"\0" * delta
    hasher = ETagHasher(part_sizes=part_sizes)
    hasher.update(changed)
    assert hasher.hexdigest() != expected


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=5 * 1024**3), st.integers(min_value=1, max_value=10_000),
       st.data())
def test_uniform_parts_add_up_to_the_size(first_part, parts_count, draw):
    # S3 allows at most 10,000 parts; the last one is 1 byte up to a full part.
    size = first_part * (parts_count - 1) + draw.draw(st.integers(min_value=1, max_value=first_part))
    sizes = uniform_part_sizes(size=size, first_part=first_part, parts_count=parts_count)
    assert sizes is not None
    assert sum(sizes) == size
    assert all(s == first_part for s in sizes[:-1]) and 0 < sizes[-1] <= first_part


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=10**6), st.integers(min_value=1, max_value=10**4),
       st.integers(min_value=1, max_value=50))
def test_uneven_uploads_are_not_guessed(size, first_part, parts_count):
    sizes = uniform_part_sizes(size=size, first_part=first_part, parts_count=parts_count)
    if sizes is None:
        last = size - first_part * (parts_count - 1)
        assert not 0 < last <= first_part
    else:
        assert sum(sizes) == size and len(sizes) == parts_count


def test_file_etag_reads_only_the_first_bytes_asked_for(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abcdefgh")
    assert file_etag(path, part_sizes=None, length=3) == hashlib.md5(b"abc").hexdigest()
    assert file_etag(path, part_sizes=[4, 4]) == s3_multipart_etag(b"abcdefgh", [4, 4])


@settings(deadline=None)
@given(st.integers(min_value=5, max_value=64), st.integers(min_value=2, max_value=50),
       st.integers(min_value=1, max_value=2**20))
def test_the_part_size_of_an_even_upload_in_whole_mib_follows_from_its_count(part_mib, parts, last):
    part = part_mib * 2**20
    size = part * (parts - 1) + min(last, part)
    assert part_size_from_count(size=size, parts_count=parts) in (part, None), "never a wrong size"


def test_a_gib_uploaded_by_boto3_in_8_mib_parts_needs_no_question_to_the_store():
    assert part_size_from_count(size=2**30, parts_count=128) == 8 * 2**20
    assert part_size_from_count(size=2**30 + 5, parts_count=129) == 8 * 2**20


def test_a_part_size_that_arithmetic_cannot_settle_is_none():
    # 10 MiB in 2 parts: any part size from 5 to 10 MiB - 1 byte fits, and 5 MiB .. 9 MiB are whole.
    assert part_size_from_count(size=10 * 2**20, parts_count=2) is None
    assert part_size_from_count(size=7, parts_count=1) == 7
