"""Compute S3 ETags locally, so a downloaded or already-present file can be checked against S3.

A single-part upload's ETag is the MD5 of the content; a multipart upload's is the MD5 of the
concatenated binary MD5s of its parts, then ``-<number of parts>``. Verifying the latter needs
the part sizes, which ``stores.s3.S3Store.part_sizes`` reads. Pure; used by
``services.fetch_model`` while it streams a download and when it checks an existing file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

_READ_CHUNK = 1024 * 1024


class ETagHasher:
    """Feed the object's bytes in order, then ask for the ETag S3 would have given them.

    ``part_sizes`` None means a single-part object; otherwise the size of every part in order.
    Bytes beyond the last part, or missing from it, give an ETag with another part count or
    another last-part digest, so a file of the wrong length never matches.
    """

    def __init__(self, *, part_sizes: Sequence[int] | None) -> None:
        self._part_sizes = list(part_sizes) if part_sizes is not None else None
        self._current = hashlib.md5(usedforsecurity=False)
        self._current_len = 0
        self._part_digests: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._part_sizes is None:
            self._current.update(view)
            return
        while view:
            index = len(self._part_digests)
            # Past the last part, everything goes into one more "part" that cannot match.
            room = (self._part_sizes[index] - self._current_len if index < len(self._part_sizes)
                    else len(view))
            take = min(room, len(view))
            self._current.update(view[:take])
            self._current_len += take
            view = view[take:]
            if index < len(self._part_sizes) and self._current_len == self._part_sizes[index]:
                self._part_digests.append(self._current.digest())
                self._current = hashlib.md5(usedforsecurity=False)
                self._current_len = 0

    def hexdigest(self) -> str:
        if self._part_sizes is None:
            return self._current.hexdigest()
        return combine_part_digests(self._part_digests + ([self._current.digest()] if self._current_len else []))


def uniform_part_sizes(*, size: int, first_part: int, parts_count: int) -> list[int] | None:
    """The part sizes of an upload whose parts all equal the first except a shorter last one.

    That is how every common uploader (boto3, the AWS CLI, mc, rclone) splits a file; returns
    None when ``size`` cannot be split that way, and the caller must ask for each part's size.
    """
    if parts_count < 1 or first_part < 1:
        return None
    last = size - first_part * (parts_count - 1)
    if not 0 < last <= first_part:
        return None
    return [first_part] * (parts_count - 1) + [last]


def part_size_from_count(*, size: int, parts_count: int) -> int | None:
    """The part size of a ``<md5>-<parts_count>`` upload of ``size`` bytes, from arithmetic alone.

    An uploader cutting parts of ``P`` bytes makes ``ceil(size / P)`` parts, so ``P`` lies in
    ``[ceil(size / N), ceil(size / (N - 1)) - 1]``. Returns it when that range holds one value,
    or one whole number of MiB (uploaders choose MiB sizes); None when it stays ambiguous, and
    the caller must ask the store (HeadObject ``PartNumber=1``). Used when the store does not
    answer per-part HEADs; a wrong answer can only fail verification, never pass bad bytes.
    """
    if parts_count < 1 or size < parts_count:
        return None
    if parts_count == 1:
        return size
    low = -(-size // parts_count)
    high = -(-size // (parts_count - 1)) - 1
    if low > high:
        return None
    if low == high:
        return low
    mib = 1024 * 1024
    first = -(-low // mib) * mib
    return first if first <= high < first + mib else None


def combine_part_digests(digests: Sequence[bytes]) -> str:
    """The multipart ETag of parts with these binary MD5s: MD5 of their concatenation, ``-N``."""
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def file_etag(path: Path, *, part_sizes: Sequence[int] | None, length: int | None = None) -> str:
    """The ETag of a local file's first ``length`` bytes (all of it when None)."""
    hasher = ETagHasher(part_sizes=part_sizes)
    feed_file(hasher, path, length=length)
    return hasher.hexdigest()


def feed_file(hasher: ETagHasher, path: Path, *, length: int | None = None) -> None:
    """Feed a local file's first ``length`` bytes (all of it when None) to ``hasher``."""
    remaining = length
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(_READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
