"""The model loader's pure arithmetic: which byte ranges to GET, how each is checked, the journal.

``services.fetch_model`` copies one object as several ranged GETs at once and verifies every
range as its bytes arrive. What it needs to decide, and nothing that does I/O, lives here so
it can be tested alone:

- ``plan_object``: the object's *units* (what its ETag is computed over: each part of a
  multipart upload, or the whole object) and its *ranges* (what is downloaded in one GET, about
  ``part_size`` bytes). Ranges of a multipart object are whole groups of its upload's parts
  whenever the parts are no larger than ``part_size``, so the worker that downloads a range
  hashes its parts as they arrive and nothing is read twice; larger parts, and single-part
  objects, are split, and their MD5 is carried on in order (``services.fetch_model``).
- ``Journal``: what a copy interrupted half-way keeps next to its partial file: the object's
  identity (ETag, size, LastModified), the ranges, and for every range already on disk the
  check it passed (the digest of each whole unit it covers). A resumed copy re-checks those
  ranges against the local file before trusting them, so a range damaged on disk is fetched
  again, and nothing verified is fetched twice; pieces of a unit hashed across ranges are
  checked by that unit's digest at the end (a mismatch fetches the object again, once).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Bytes downloaded by one ranged GET unless ``--part-size`` says otherwise: large enough that
#: per-request costs (signing, a round trip) vanish, small enough that several run per file.
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 1024 * 1024
JOURNAL_VERSION = 1


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, start + length)`` of an object."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Range(Span):
    """One ranged GET. ``units`` are the indexes of the ETag units it covers whole (their MD5s
    are its check); ``within`` the index of the one unit it is a piece of, when it covers none
    whole (its check is a CRC32 of its bytes); both empty/None for objects with no MD5 ETag."""

    units: tuple[int, ...] = ()
    within: int | None = None


@dataclass(frozen=True)
class ObjectPlan:
    """How one object is downloaded and verified; ``units`` empty: checked by size only."""

    size: int
    units: tuple[Span, ...]
    ranges: tuple[Range, ...]

    @property
    def split_units(self) -> frozenset[int]:
        """Units whose bytes arrive in several ranges: their MD5 is carried on in order."""
        return frozenset(r.within for r in self.ranges if r.within is not None)


def plan_object(*, size: int, unit_sizes: Sequence[int] | None, part_size: int) -> ObjectPlan:
    """Ranges of about ``part_size`` bytes covering ``size`` bytes, aligned to the units.

    ``unit_sizes``: the sizes of the upload's parts (multipart ETag), ``[size]`` for a
    single-part MD5 ETag, None when the ETag is no MD5 (only the size can be checked).
    """
    if part_size < 1:
        raise ValueError(f"part size must be positive, got {part_size}")
    if unit_sizes is None:
        return ObjectPlan(size=size, units=(), ranges=tuple(
            Range(start, length) for start, length in _split(0, size, part_size)))
    if sum(unit_sizes) != size:
        raise ValueError(f"unit sizes add up to {sum(unit_sizes)}, not the object's {size} bytes")
    units = units_of(unit_sizes)
    ranges: list[Range] = []
    group: list[int] = []
    for index, unit in enumerate(units):
        if unit.length > part_size:
            ranges.extend(_group(units, group))
            group = []
            ranges.extend(Range(start, length, within=index)
                          for start, length in _split(unit.start, unit.length, part_size))
            continue
        if group and sum(units[i].length for i in group) + unit.length > part_size:
            ranges.extend(_group(units, group))
            group = []
        group.append(index)
    ranges.extend(_group(units, group))
    return ObjectPlan(size=size, units=tuple(units), ranges=tuple(ranges))


def units_of(unit_sizes: Sequence[int]) -> tuple[Span, ...]:
    """The spans of consecutive units of these sizes."""
    units: list[Span] = []
    offset = 0
    for length in unit_sizes:
        units.append(Span(offset, length))
        offset += length
    return tuple(units)


def _group(units: Sequence[Span], indexes: Sequence[int]) -> list[Range]:
    if not indexes:
        return []
    first, last = units[indexes[0]], units[indexes[-1]]
    return [Range(first.start, last.end - first.start, units=tuple(indexes))]


def _split(start: int, length: int, part_size: int) -> list[tuple[int, int]]:
    """Equal-ish pieces of at most ``part_size`` (the last one shorter), none empty."""
    count = max(1, math.ceil(length / part_size))
    if length == 0:
        return []
    return [(start + i * part_size, min(part_size, length - i * part_size)) for i in range(count)]


def parse_size(text: str) -> int:
    """``16Mi``, ``16MiB``, ``8M`` or plain bytes -> bytes; raises ``ValueError`` naming the forms."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    cleaned = text.strip().lower().removesuffix("b")
    number = cleaned.rstrip("kmgi")
    suffix = cleaned[len(number):]
    try:
        value = float(number) * units[suffix]
    except (ValueError, KeyError):
        raise ValueError(f"{text!r} is not a size: write bytes or a number with Ki, Mi, Gi "
                         "(or k, M, G), such as 16Mi") from None
    return int(value)


@dataclass
class Journal:
    """A partial copy's record: the object it is of, its ranges, and the checks of those done.

    ``done`` maps a range's start to its check: ``{"digests": [hex per unit]}`` (MD5, or SHA-256
    where the object declares one) for a range of whole units; ``{"carried": true}`` for a piece
    of a unit hashed across ranges (the unit's digest checks it at the end); ``{"crc32": int}``
    for objects checked by size only. Serialised as JSON by ``to_json``; ``from_json``
    returns None for text that is not a journal of this version (it is then ignored and the
    object fetched from the start).
    """

    key: str
    etag: str
    size: int
    last_modified: str | None
    ranges: tuple[Range, ...]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)

    def matches(self, *, key: str, etag: str, size: int, last_modified: str | None) -> bool:
        """Whether this journal is of the object as it is in the store now."""
        return (self.key, self.etag, self.size, self.last_modified) == (key, etag, size, last_modified)

    def to_json(self) -> str:
        return json.dumps({
            "version": JOURNAL_VERSION, "key": self.key, "etag": self.etag, "size": self.size,
            "lastModified": self.last_modified,
            "ranges": [[r.start, r.length, list(r.units), r.within] for r in self.ranges],
            "done": {str(start): check for start, check in sorted(self.done.items())},
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Journal | None:
        try:
            data = json.loads(text)
            if data.get("version") != JOURNAL_VERSION:
                return None
            ranges = tuple(Range(int(start), int(length), units=tuple(int(u) for u in units),
                                 within=None if within is None else int(within))
                           for start, length, units, within in data["ranges"])
            starts = {r.start for r in ranges}
            done = {int(start): dict(check) for start, check in data["done"].items()}
            if not set(done) <= starts:
                return None
            return cls(key=str(data["key"]), etag=str(data["etag"]), size=int(data["size"]),
                       last_modified=data.get("lastModified"), ranges=ranges, done=done)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @property
    def bytes_done(self) -> int:
        return sum(r.length for r in self.ranges if r.start in self.done)
