"""Copy model weights from ``s3://bucket/<path>/`` into the model volume, at line rate, verified
and resumable.

The use case behind ``sovereign fetch-model`` (the init container before the engine starts, and
the Job that fills a shared model cache). ``path`` is a key prefix (vLLM's directory of weights)
or, when nothing lies under it as a prefix, the key of one object (llama.cpp's single GGUF file),
copied into the destination under its base name.

How the bytes move: ``concurrency`` workers take ranged GETs of about ``part_size`` bytes
(``services.fetch_parts.plan_object``) from every file in key order, so a large file is
fetched by all workers at once and small files side by side. Each worker writes its range with
``os.pwrite`` into the file's preallocated partial file (memory stays at one 1 MiB chunk per
worker, whatever the file size) and hashes the bytes as they arrive, in its own thread
(hashlib releases the GIL on large buffers):

- a multipart object (ETag ``<md5>-N``): its part sizes come from HeadObject ``PartNumber=1``
  (or, where the store does not answer that, from N and the size), ranges are cut on its part
  boundaries, and each part's MD5 is computed by the worker that fetched it; at the end the MD5
  of those MD5s must equal the ETag, for any part size the uploader chose;
- a single-part object: its MD5 is carried on in byte order across ranges (hashed on arrival by
  the worker whose range is next in line, read back from the page cache otherwise);
- an object whose uploader declared its SHA-256 (user metadata ``sha256``, as
  ``sovereign_dev`` and mirroring tools upload weights): that digest, carried in byte order like
  a single-part MD5, is checked instead of the ETag (it is the stronger check, and If-Match
  ties every range to the version whose metadata was read);
- else an object with the CRC32 checksum the store keeps (what the AWS SDKs upload by default
  since 2025; HeadObject ``ChecksumMode``): that checksum instead of the MD5 ETag, part by part
  for a composite one, carried in order for a full-object one. It catches the same corruption
  in transit or on disk for a fraction of the CPU (an MD5 costs more than the transfer itself
  on small nodes);
- an object whose ETag is no MD5 (SSE-KMS, SSE-C) and that declares no SHA-256: checked by
  size only, and logged.

Every GET carries ``If-Match`` the listed ETag: an object replaced during the copy fails the
run with a message naming it, and its partial file and journal are removed (the partial files
of the other objects are kept, still valid, for the next run). A file that does not verify is
fetched whole once more, then refused.

Resuming: beside each partial file ``.<name>.<etag>.partial`` a journal ``.<name>.<etag>.journal``
(JSON, rewritten atomically at most every half second) records the ranges on disk and the check
each passed (the digests of its parts; a CRC32 for objects checked by size only). A copy killed half-way (SIGKILL, a node drain)
re-checks those ranges against the local file on the next run, keeps those that match and
fetches the rest, never a verified range twice. A complete file is fsynced and renamed into
place, so the engine never sees a half-written file; the destination's manifest
``.sovereign-fetch.json`` records every verified file (size, ETag, mtime), so a re-run on a
complete directory costs one listing and one HEAD per changed file. A local file of the right
size not in the manifest is hashed and kept if it matches; a shorter one (an earlier tool, a
full disk) keeps its whole ranges, checked by the ETag at the end.

Loaders of several replicas sharing one volume take turns (a lock file in the destination).
With ``allowed_regions`` the bucket's location is checked first and a store outside them is
refused. Progress goes to a ``Progress`` sink the caller chooses (rich bar or log lines).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sovereign.policy.residency_store import check_location
from sovereign.services.fetch_parts import (
    DEFAULT_PART_SIZE,
    Journal,
    Range,
    Span,
    plan_object,
    units_of,
)
from sovereign.stores.errors import BucketNotFound, ObjectChanged, TransferInterrupted
from sovereign.stores.etag import combine_part_digests
from sovereign.stores.readings import ObjectHead, ObjectInfo
from sovereign.stores.s3 import S3Store

log = logging.getLogger(__name__)

MANIFEST_NAME = ".sovereign-fetch.json"
#: Ranged GETs in flight at once unless ``--concurrency`` says otherwise: enough to fill a
#: link whose single stream is limited by latency, few enough for a small store.
DEFAULT_CONCURRENCY = 8
LOCK_NAME = ".sovereign-fetch.lock"
_PARTIAL_SUFFIX = ".partial"
_JOURNAL_SUFFIX = ".journal"
_MANIFEST_VERSION = 1


class FetchError(Exception):
    """The model cannot be fetched as asked; the message names the source and the fix."""


class RegionNotAllowed(FetchError):
    """The bucket is outside the allowed regions."""


class EmptySource(FetchError):
    """No object exists under the prefix."""


class IntegrityError(FetchError):
    """Downloaded bytes do not match the object's ETag, even after downloading again."""


class Action(StrEnum):
    SKIPPED = "skipped"          # already present and verified
    DOWNLOADED = "downloaded"    # fetched whole
    RESUMED = "resumed"          # completed from a partial or truncated local file
    REPLACED = "replaced"        # a local file of the right size did not match; fetched again


class Verification(StrEnum):
    MANIFEST = "manifest"  # verified by an earlier run; size and mtime unchanged since
    ETAG = "etag"          # hashed and equal to the object's ETag
    SHA256 = "sha256"      # hashed and equal to the SHA-256 its uploader declared (x-amz-meta-sha256)
    CRC32 = "crc32"        # hashed and equal to the CRC32 checksum the store keeps (x-amz-checksum-crc32)
    SIZE = "size"          # the ETag is not an MD5 (SSE-KMS, SSE-C): only the size is checked


@dataclass(frozen=True)
class FileResult:
    path: str
    size: int
    action: Action
    verified_by: Verification
    bytes_downloaded: int = 0
    integrity_failures: int = 0


@dataclass
class FetchReport:
    """What one run did, file by file; the CLI prints ``summary()``, tests read the counters."""

    source: str
    dest: Path
    files: list[FileResult] = field(default_factory=list)
    extraneous: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_downloaded(self) -> int:
        return sum(f.bytes_downloaded for f in self.files)

    def paths(self, action: Action) -> list[str]:
        return sorted(f.path for f in self.files if f.action is action)

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.paths(a))} {a.value}" for a in Action if self.paths(a))
        return (f"{self.source} -> {self.dest}: {len(self.files)} files, "
                f"{human_bytes(self.total_bytes)} ({counts}); "
                f"{human_bytes(self.bytes_downloaded)} downloaded")


class Progress(Protocol):
    """Where a fetch reports progress; called from worker threads."""

    def begin(self, *, source: str, files: int, total_bytes: int) -> None: ...

    def file_started(self, *, path: str, size: int, offset: int) -> None: ...

    def advance(self, *, path: str, nbytes: int) -> None: ...

    def file_done(self, result: FileResult) -> None: ...


class NoProgress:
    """A ``Progress`` that shows nothing."""

    def begin(self, *, source: str, files: int, total_bytes: int) -> None:
        pass

    def file_started(self, *, path: str, size: int, offset: int) -> None:
        pass

    def advance(self, *, path: str, nbytes: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        pass


def fetch_model(
    *,
    store: S3Store,
    bucket: str,
    path: str,
    dest: Path,
    allowed_regions: Sequence[str] = (),
    concurrency: int = DEFAULT_CONCURRENCY,
    part_size: int = DEFAULT_PART_SIZE,
    verify_existing: bool = False,
    durable: bool = False,
    attempts: int = 3,
    progress: Progress | None = None,
) -> FetchReport:
    """Make ``dest`` hold a verified copy of every object under ``s3://bucket/path/``.

    ``concurrency``: ranged GETs in flight at once, across and within files; ``part_size``:
    bytes per GET (aligned to the parts of multipart uploads). ``verify_existing`` re-hashes
    files the manifest already vouches for. ``durable`` fsyncs every file before it is recorded
    (for volumes other nodes read; otherwise the manifest records the boot instead, see
    ``_Manifest``). ``attempts`` bounds the resumptions of one range after broken connections. Raises ``FetchError`` (input or
    content problems) or ``stores.errors.StoreError`` (endpoint, credentials, permissions).
    """
    prefix = normalize_prefix(path)
    source = f"s3://{bucket}/{prefix}"
    progress = progress or NoProgress()
    try:
        if allowed_regions:
            store = _in_allowed_region(store=store, bucket=bucket, source=source,
                                       allowed_regions=allowed_regions)
        objects = store.list_objects(bucket=bucket, prefix=prefix)
        wanted = plan_paths(objects=objects, prefix=prefix, source=source)
        if not wanted and prefix:
            # Nothing under it as a directory: the path may name one object (a GGUF file).
            key = prefix.rstrip("/")
            single = [obj for obj in store.list_objects(bucket=bucket, prefix=key) if obj.key == key]
            if single:
                source = f"s3://{bucket}/{key}"
                wanted = [(key.rpartition("/")[2], single[0])]
    except BucketNotFound as err:
        raise FetchError(f"cannot fetch {source}: {err}") from None
    if not wanted:
        raise EmptySource(_empty_source_message(store=store, bucket=bucket, prefix=prefix))
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise FetchError(f"the destination {dest} is not a directory: point --dest at the model volume")
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest / LOCK_NAME):
        job = _Job(store=store, bucket=bucket, dest=dest, manifest=_Manifest(dest / MANIFEST_NAME, durable=durable),
                   verify_existing=verify_existing, attempts=attempts, part_size=part_size,
                   progress=progress)
        progress.begin(source=source, files=len(wanted), total_bytes=sum(o.size for _, o in wanted))
        report = FetchReport(source=source, dest=dest)
        report.files = job.run_all(wanted, concurrency=concurrency)
    report.extraneous = _extraneous(dest, {rel for rel, _ in wanted})
    if report.extraneous:
        log.warning("%d file(s) in %s are not in %s and were left in place: %s",
                    len(report.extraneous), dest, source, ", ".join(report.extraneous[:10]))
    return report


def normalize_prefix(path: str) -> str:
    """``models/qwen`` and ``/models/qwen/`` both mean the prefix ``models/qwen/``; empty: the bucket."""
    stripped = path.strip().strip("/")
    return f"{stripped}/" if stripped else ""


def human_bytes(size: float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the destination for the whole run.

    Loader pods of several replicas can share one ReadWriteMany model volume; the second
    waits, then finds every file verified and downloads nothing.
    """
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another loader is filling %s; waiting for it to finish", lock_path.parent)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _in_allowed_region(*, store: S3Store, bucket: str, source: str,
                       allowed_regions: Sequence[str]) -> S3Store:
    """The store, signing for the bucket's region, once that region is known to be allowed."""
    location = store.bucket_location(bucket=bucket)
    decision = check_location(bucket=bucket, location=location, allowed_regions=allowed_regions)
    if not decision.ok:
        raise RegionNotAllowed(
            f"refusing to fetch {source} from {store.where}: {decision.message}; model weights "
            "must come from an in-country store (check --endpoint/--bucket or --allowed-regions)")
    return store if location == store.region else store.with_region(location)


def plan_paths(*, objects: Sequence[ObjectInfo], prefix: str,
               source: str) -> list[tuple[str, ObjectInfo]]:
    """(local path relative to the destination, object) for every object under ``prefix``.

    "Folder" marker objects (keys ending in ``/``) are skipped; a key with an empty, ``.`` or
    ``..`` segment, or named like the manifest, raises ``FetchError`` rather than writing
    outside the destination or over the manifest.
    """
    planned = []
    for obj in objects:
        relative = obj.key[len(prefix):]
        if not relative or relative.endswith("/"):
            continue  # a "folder" marker object, as consoles create; nothing to write
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts) or relative in (MANIFEST_NAME, LOCK_NAME):
            raise FetchError(
                f"object {obj.key!r} under {source} cannot be written safely as {relative!r} "
                "(empty, '.' or '..' path segment, or a reserved name): rename it in the store")
        planned.append((relative, obj))
    return planned


def _empty_source_message(*, store: S3Store, bucket: str, prefix: str) -> str:
    parent = prefix.rstrip("/").rpartition("/")[0]
    parent = f"{parent}/" if parent else ""
    siblings = store.list_prefixes(bucket=bucket, prefix=parent)
    hint = (f"prefixes under s3://{bucket}/{parent}: {', '.join(siblings)}" if siblings
            else f"s3://{bucket}/{parent} has no sub-prefixes either")
    return (f"no objects under s3://{bucket}/{prefix} at {store.where}: check the model path "
            f"(models[].source.path, --path); {hint}")


def _extraneous(dest: Path, wanted: set[str]) -> list[str]:
    found = []
    for root, _, names in os.walk(dest):
        for name in names:
            relative = Path(root, name).relative_to(dest).as_posix()
            if relative in (MANIFEST_NAME, LOCK_NAME) or _is_partial(name):
                continue
            if relative not in wanted:
                found.append(relative)
    return sorted(found)


def _partial_path(target: Path, etag: str) -> Path:
    tag = "".join(c for c in etag if c.isalnum() or c == "-")
    return target.with_name(f".{target.name}.{tag}{_PARTIAL_SUFFIX}")


def _is_partial(name: str) -> bool:
    """A partial file or journal of an unfinished copy (or the journal's temporary file)."""
    return name.startswith(".") and name.endswith((_PARTIAL_SUFFIX, _JOURNAL_SUFFIX,
                                                   f"{_JOURNAL_SUFFIX}.tmp"))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _boot_id() -> str | None:
    """This boot of the kernel (Linux); None where it cannot be read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


class _Manifest:
    """``relative path -> {size, etag, mtime_ns, verified_by, boot}`` of files verified by a run.

    Rewritten atomically after every completed file, so an interrupted run keeps what it had
    verified. An unreadable manifest is ignored (files are then re-verified by hashing).

    Files are not fsynced (on this project's machine that doubled a copy's time: the page cache
    takes the bytes at memory speed, the disk at its own): each entry records the kernel's boot
    id instead. While the machine has not restarted, the page cache is the file, whether or not
    it reached the disk; after a restart an entry of another boot vouches for nothing and the
    file is hashed again, so bytes lost with the page cache are found and fetched. Where no
    boot id can be read, or with ``durable`` (a volume other nodes read, such as a shared cache,
    where this node's boot says nothing), files are fsynced and their entries vouch anywhere.
    """

    def __init__(self, path: Path, *, durable: bool = False) -> None:
        self.path = path
        self.boot = None if durable else _boot_id()
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, object]] = {}
        try:
            data = json.loads(path.read_text())
            if data.get("version") == _MANIFEST_VERSION:
                self._files = dict(data.get("files", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as err:
            log.warning("ignoring unreadable manifest %s (%s); files will be re-verified", path, err)

    def vouches_for(self, relative: str, obj: ObjectInfo, target: Path) -> bool:
        entry = self._files.get(relative)
        if not entry or entry.get("etag") != obj.etag or entry.get("size") != obj.size:
            return False
        if entry.get("boot") not in (None, self.boot):
            return False
        try:
            stat = target.stat()
        except FileNotFoundError:
            return False
        return stat.st_size == obj.size and stat.st_mtime_ns == entry.get("mtime_ns")

    def record(self, relative: str, obj: ObjectInfo, target: Path, verified_by: Verification) -> None:
        entry = {"size": obj.size, "etag": obj.etag, "mtime_ns": target.stat().st_mtime_ns,
                 "verified_by": verified_by.value, "boot": self.boot}
        with self._lock:
            self._files[relative] = entry
            text = json.dumps({"version": _MANIFEST_VERSION, "files": self._files},
                              indent=1, sort_keys=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)


def _combine(head: ObjectHead, obj: ObjectInfo, digests: list[bytes]) -> str:
    """What the units' digests add up to, spelled as the store spells the value it declares:
    the SHA-256 in hex; a CRC32 checksum in base64 (of the CRC32 of the parts' CRC32s, then
    ``-N``, for a composite one); an ETag as hex MD5 (of the parts' MD5s, then ``-N``)."""
    if not digests:
        return ""
    if head.sha256:
        return digests[0].hex()
    if head.checksum_crc32:
        if head.checksum_type == "COMPOSITE":
            combined = zlib.crc32(b"".join(digests)).to_bytes(4, "big")
            return f"{base64.b64encode(combined).decode()}-{len(digests)}"
        return base64.b64encode(digests[0]).decode()
    if obj.parts_count:
        return combine_part_digests(digests)
    return digests[0].hex()


def _new_hash(head: ObjectHead) -> Any:
    """A fresh digest of the kind ``head`` is verified by."""
    if head.sha256:
        return hashlib.sha256()
    if head.checksum_crc32:
        return _Crc32()
    return hashlib.md5(usedforsecurity=False)


def _verification(head: ObjectHead) -> Verification:
    """How a copy of the object is checked: the SHA-256 its uploader declared, else the CRC32
    checksum the store keeps of it, else its ETag when that is an MD5, else its size only."""
    if head.sha256:
        return Verification.SHA256
    if head.checksum_crc32:
        return Verification.CRC32
    return Verification.ETAG if head.etag_is_content_md5 else Verification.SIZE


class _Crc32:
    """zlib's CRC32 behind hashlib's interface; ``digest`` is big-endian, as S3 encodes it."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")

    def hexdigest(self) -> str:
        return self.digest().hex()


class _Aborted(Exception):
    """Another copy failed; this worker stops between chunks."""


#: A journal is rewritten at most this often while ranges complete: a copy killed in between
#: fetches the last fraction of a second again, which is cheaper than a write per range.
_JOURNAL_EVERY_S = 0.5
_READ_BACK = 1024 * 1024


class _Carry:
    """The running MD5 of one unit that arrives in several ranges (a single-part object, or a
    part larger than the range size): bytes are hashed in order, on arrival by the worker whose
    range starts at the cursor, otherwise read back from the partial file once the cursor
    reaches them."""

    def __init__(self, index: int, unit: Span, digest: Any) -> None:
        self.index = index
        self.unit = unit
        self.cursor = unit.start
        self.md5 = digest
        self.busy = False
        self.ready: dict[int, int] = {}  # start -> end of ranges on disk, not yet hashed


class _Copy:
    """One object being copied into its partial file, range by range, by any worker."""

    def __init__(self, *, job: _Job, relative: str, obj: ObjectInfo, head: ObjectHead,
                 unit_sizes: list[int] | None, target: Path, action: Action) -> None:
        self.job, self.relative, self.obj, self.head, self.target = job, relative, obj, head, target
        self.unit_sizes = unit_sizes
        self.action = action
        self.partial = _partial_path(target, obj.etag)
        self.journal_path = self.partial.with_name(self.partial.name.removesuffix(_PARTIAL_SUFFIX)
                                                   + _JOURNAL_SUFFIX)
        self.lock = threading.Lock()
        self.save_lock = threading.Lock()
        self.fd = -1
        self.transferred = 0
        self.failures = 0
        self.abandoned = False
        self.finished = False
        self.exact_parts = False
        self._saved_at = 0.0
        self._reset(self._fresh_journal())

    # -- setup ------------------------------------------------------------------------------

    def _fresh_journal(self) -> Journal:
        plan = plan_object(size=self.obj.size, unit_sizes=self.unit_sizes,
                           part_size=self.job.part_size)
        return Journal(key=self.obj.key, etag=self.obj.etag, size=self.obj.size,
                       last_modified=self._last_modified, ranges=plan.ranges)

    @property
    def _last_modified(self) -> str | None:
        return self.head.last_modified.isoformat() if self.head.last_modified else None

    def _reset(self, journal: Journal) -> None:
        self.journal = journal
        self.units = units_of(self.unit_sizes) if self.unit_sizes is not None else ()
        self.digests: dict[int, bytes] = {}
        self.carries = {r.within: _Carry(r.within, self.units[r.within], _new_hash(self.head))
                        for r in journal.ranges if r.within is not None}
        self.pending = [r for r in journal.ranges if r.start not in journal.done]

    def open(self) -> int:
        """Reuse what an interrupted copy left (re-checked), or start a new partial file.

        Returns the bytes already on disk and verified, for the progress display.
        """
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._drop_stale_partials()
        journal = None
        if self.partial.exists():
            with contextlib.suppress(FileNotFoundError):
                journal = Journal.from_json(self.journal_path.read_text())
            if journal is None or not journal.matches(key=self.obj.key, etag=self.obj.etag,
                                                      size=self.obj.size,
                                                      last_modified=self._last_modified):
                journal = None
                self.partial.unlink()
        adopted = 0
        if journal is None and self.target.exists():
            # A truncated copy (an earlier tool, a full disk): its whole ranges are kept and
            # checked by the object's ETag at the end, the rest is fetched.
            adopted = self.target.stat().st_size
            os.replace(self.target, self.partial)
        self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, self.obj.size)
        if journal is not None:
            self._reset(journal)
            kept = self._recheck(dict(journal.done))
        elif adopted:
            fresh = self._fresh_journal()
            self._reset(fresh)
            whole = {r.start: {} for r in fresh.ranges if r.end <= adopted}
            kept = self._recheck(whole, trust=True)
        else:
            kept = 0
        if kept and self.action is Action.DOWNLOADED:
            self.action = Action.RESUMED
        for carry in self.carries.values():
            self._catch_up(carry)
        self._save(force=True)
        return kept

    def _recheck(self, done: dict[int, dict[str, Any]], *, trust: bool = False) -> int:
        """Hash the ranges a previous run wrote, from the local file; keep those that match their
        recorded check (``trust``: that have no record, for bytes adopted from a truncated file,
        which only the ETag at the end can vouch for). Returns the bytes kept."""
        kept = 0
        self.journal.done = {}
        for rng in self.journal.ranges:
            if rng.start not in done:
                continue
            check = self._hash_local(rng)
            if trust or check == done[rng.start]:
                self._mark_done(rng, check)
                kept += rng.length
            else:
                log.warning("bytes %d-%d of %s changed on disk since they were verified; "
                            "fetching them again", rng.start, rng.end - 1, self.partial)
        self.pending = [r for r in self.journal.ranges if r.start not in self.journal.done]
        return kept

    def _hash_local(self, rng: Range) -> dict[str, Any]:
        if rng.within is not None:
            # Read back into the carried digest anyway, and checked by it at the end.
            return self._check(rng, [], 0)
        digests = [_new_hash(self.head) for _ in rng.units]
        crc = 0
        for offset, chunk in self._read_back(rng.start, rng.end):
            if rng.units:
                self._feed_units(rng, digests, offset, chunk)
            else:
                crc = zlib.crc32(chunk, crc)
        return self._check(rng, digests, crc)

    def _read_back(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        offset = start
        while offset < end:
            chunk = os.pread(self.fd, min(_READ_BACK, end - offset), offset)
            if not chunk:
                raise OSError(f"{self.partial} ends at byte {offset}, before {end}")
            yield offset, chunk
            offset += len(chunk)

    # -- one range --------------------------------------------------------------------------

    def fetch(self, rng: Range) -> None:
        """Download one range into the partial file, hashing it as it arrives; finish the
        object when it was the last one."""
        carry = self.carries.get(rng.within) if rng.within is not None else None
        claimed = False
        if carry is not None:
            with self.lock:
                if carry.cursor == rng.start and not carry.busy:
                    carry.busy = claimed = True
        digests = [_new_hash(self.head) for _ in rng.units]
        crc = 0
        position = rng.start
        tries = 0
        while position < rng.end:
            try:
                for chunk in self.job.store.read_range(bucket=self.job.bucket, key=self.obj.key,
                                                       etag=self.obj.etag, start=position,
                                                       end=rng.end):
                    if self.job.stop.is_set() or self.abandoned:
                        raise _Aborted()
                    if len(chunk) > rng.end - position:
                        chunk = chunk[:rng.end - position]
                    os.pwrite(self.fd, chunk, position)
                    if rng.units:
                        self._feed_units(rng, digests, position, chunk)
                    elif claimed:
                        carry.md5.update(chunk)  # type: ignore[union-attr]
                    elif carry is None:
                        crc = zlib.crc32(chunk, crc)
                    position += len(chunk)
                    with self.lock:
                        self.transferred += len(chunk)
                    self.job.progress.advance(path=self.relative, nbytes=len(chunk))
                if position < rng.end:
                    raise TransferInterrupted(
                        f"s3://{self.job.bucket}/{self.obj.key} ended at byte {position}, "
                        f"before {rng.end}: run again to resume",
                        server_message="the response ended early")
            except TransferInterrupted as err:
                tries += 1
                if tries >= self.job.attempts:
                    raise
                log.warning("download of s3://%s/%s broke (%s); resuming at byte %d "
                            "(attempt %d of %d)", self.job.bucket, self.obj.key,
                            err.server_message or err, position, tries + 1, self.job.attempts)
            except ObjectChanged:
                raise self.abandon() from None
            except OSError:
                if self.abandoned or self.job.stop.is_set():
                    raise _Aborted() from None
                raise
        with self.lock:
            if claimed:
                carry.cursor, carry.busy = rng.end, False  # type: ignore[union-attr]
            self._mark_done(rng, self._check(rng, digests, crc))
        if carry is not None:
            self._catch_up(carry)
        self._save()
        self._finish_if_complete()

    def _feed_units(self, rng: Range, digests: list[Any], offset: int, chunk: bytes) -> None:
        """Hash ``chunk`` (at ``offset``) into the MD5s of the units of ``rng`` it falls in."""
        view = memoryview(chunk)
        for index, unit_index in enumerate(rng.units):
            unit = self.units[unit_index]
            low, high = max(unit.start, offset), min(unit.end, offset + len(view))
            if low < high:
                digests[index].update(view[low - offset:high - offset])

    def _check(self, rng: Range, digests: list[Any], crc: int) -> dict[str, Any]:
        """What the journal keeps of a range: its units' digests; for a piece of a carried unit,
        nothing (its bytes are checked by that unit's digest at the end, so a hash per range
        would cost a fifth more CPU for no earlier answer); else (no digest to check against at
        all) a CRC32 that a resumed copy can compare."""
        if rng.units:
            return {"digests": [d.hexdigest() for d in digests]}
        return {"carried": True} if rng.within is not None else {"crc32": crc}

    def _mark_done(self, rng: Range, check: dict[str, Any]) -> None:
        self.journal.done[rng.start] = check
        for unit_index, digest in zip(rng.units, check.get("digests", ())):
            self.digests[unit_index] = bytes.fromhex(digest)
        if rng.within is not None and rng.within in self.carries:
            carry = self.carries[rng.within]
            if carry.cursor <= rng.start:
                carry.ready[rng.start] = rng.end

    def _catch_up(self, carry: _Carry) -> None:
        """Hash, in order, the ranges of ``carry``'s unit that are on disk and next in line."""
        while True:
            with self.lock:
                if carry.busy or carry.cursor not in carry.ready:
                    break
                start = carry.cursor
                end = carry.ready.pop(start)
                carry.busy = True
            for _, chunk in self._read_back(start, end):
                carry.md5.update(chunk)
            with self.lock:
                carry.cursor, carry.busy = end, False
        with self.lock:
            if carry.cursor == carry.unit.end and carry.index not in self.digests:
                self.digests[carry.index] = carry.md5.digest()

    # -- the end ----------------------------------------------------------------------------

    def _finish_if_complete(self) -> None:
        with self.lock:
            complete = (len(self.journal.done) == len(self.journal.ranges)
                        and len(self.digests) == len(self.units) and not self.finished)
            if complete:
                self.finished = True
        if complete:
            self._finish()

    def finish_empty(self) -> None:
        """An object with nothing left to fetch (empty, or all of it kept from a previous run)."""
        self._finish_if_complete()

    def _finish(self) -> None:
        verified_by = _verification(self.head)
        what, expected = {Verification.SHA256: ("SHA-256", self.head.sha256),
                          Verification.CRC32: ("CRC32 checksum", self.head.checksum_crc32)
                          }.get(verified_by, ("ETag", self.obj.etag))
        got = _combine(self.head, self.obj, [self.digests[i] for i in range(len(self.units))])
        if verified_by is not Verification.SIZE and got != expected and self._parts_were_guessed():
            got = self._with_every_part_size()
        if verified_by is not Verification.SIZE and got != expected:
            self.failures += 1
            if self.failures > 1:
                self._close()
                raise IntegrityError(
                    f"s3://{self.job.bucket}/{self.obj.key}: the downloaded bytes have {what} {got}, "
                    f"the store says {expected}; the object or the transfer is corrupt. Run "
                    "again; if it persists, re-upload the object")
            log.warning("%s did not verify (%s %s, the store says %s); downloading it whole",
                        self.target, what, got, expected)
            if self.action is Action.RESUMED:
                self.action = Action.DOWNLOADED
            with self.lock:
                self._reset(self._fresh_journal())
                self.finished = False
            self.job.progress.file_started(path=self.relative, size=self.obj.size, offset=0)
            self._save(force=True)
            self.job.submit(self, self.pending)
            return
        if self.job.manifest.boot is None:
            os.fsync(self.fd)
        self._close()
        os.replace(self.partial, self.target)
        if self.job.manifest.boot is None:
            _fsync_dir(self.target.parent)
        self.journal_path.unlink(missing_ok=True)
        if verified_by is Verification.SIZE:
            log.warning("the ETag of s3://%s/%s is not the MD5 of its content (ETag %s, "
                        "encryption %s): checked its size only", self.job.bucket, self.obj.key,
                        self.obj.etag, "SSE-C" if self.head.customer_key
                        else self.head.server_side_encryption or "none")
        self.job.manifest.record(self.relative, self.obj, self.target, verified_by)
        self.job.done(FileResult(self.relative, self.obj.size, self.action, verified_by,
                                 self.transferred, self.failures))

    def _parts_were_guessed(self) -> bool:
        """Whether the units are parts whose sizes came from the first and last part alone."""
        return bool(len(self.units) > 2 and not self.exact_parts)

    def _with_every_part_size(self) -> str:
        """The local file's ETag (or composite checksum) with each part's size asked from the
        store: an upload uneven in its middle parts verifies from the bytes on disk, without
        fetching them again."""
        assert self.obj.parts_count is not None
        self.exact_parts = True
        sizes = self.job.store.part_sizes(bucket=self.job.bucket, key=self.obj.key,
                                          size=self.obj.size, parts_count=self.obj.parts_count,
                                          every=True)
        if sizes == self.unit_sizes:
            return _combine(self.head, self.obj, [self.digests[i] for i in range(len(self.units))])
        log.info("s3://%s/%s was uploaded in parts of uneven sizes; checking it with each part's "
                 "size", self.job.bucket, self.obj.key)
        self.unit_sizes = sizes
        digests = []
        for unit in units_of(sizes):
            digest = _new_hash(self.head)
            for _, chunk in self._read_back(unit.start, unit.end):
                digest.update(chunk)
            digests.append(digest.digest())
        return _combine(self.head, self.obj, digests)

    def abandon(self) -> FetchError:
        """The object changed in the store: drop everything of it, say so."""
        with self.lock:
            first = not self.abandoned
            self.abandoned = True
        if first:
            # Other workers may still be writing: the descriptor is closed when the run ends.
            self.partial.unlink(missing_ok=True)
            self.journal_path.unlink(missing_ok=True)
        return FetchError(
            f"s3://{self.job.bucket}/{self.obj.key} was replaced in the store while it was being "
            f"copied (it no longer has ETag {self.obj.etag}): nothing of it was kept. Run again "
            "once the upload has finished")

    def suspend(self) -> None:
        """The run stops for another file's failure: keep what is verified for the next run."""
        if not self.abandoned and not self.finished:
            self._save(force=True)
        self._close()

    def _close(self) -> None:
        with self.lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if self.abandoned or (not force and now - self._saved_at < _JOURNAL_EVERY_S):
                return
            self._saved_at = now
            text = self.journal.to_json()
        with self.save_lock:
            tmp = self.journal_path.with_name(f"{self.journal_path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.journal_path)

    def _drop_stale_partials(self) -> None:
        """Partials and journals of another version of the object cannot be resumed."""
        stem = f".{self.target.name}."
        keep = {self.partial, self.journal_path}
        for entry in self.target.parent.iterdir():
            if entry not in keep and entry.name.startswith(stem) and (
                    entry.name.endswith(_PARTIAL_SUFFIX) or entry.name.endswith(_JOURNAL_SUFFIX)):
                entry.unlink()


@dataclass
class _Job:
    """One run: a pool of ``concurrency`` workers taking ranges of every file in key order."""

    store: S3Store
    bucket: str
    dest: Path
    manifest: _Manifest
    verify_existing: bool
    attempts: int
    part_size: int
    progress: Progress
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[FileResult] = field(default_factory=list)
    _pool: ThreadPoolExecutor | None = None
    _futures: list[Future[None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run_all(self, wanted: list[tuple[str, ObjectInfo]], *, concurrency: int) -> list[FileResult]:
        copies: list[_Copy] = []
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="fetch") as pool:
            self._pool = pool
            try:
                prepared = self._wait([pool.submit(self._prepare, rel, obj) for rel, obj in wanted])
                copies = [copy for copy in prepared if copy is not None]
                for copy in copies:
                    if copy.pending:
                        self.submit(copy, copy.pending)
                    else:
                        copy.finish_empty()
                while True:
                    with self._lock:
                        waiting = [f for f in self._futures if not f.done()]
                    if not waiting:
                        break
                    self._wait(waiting)
                self._wait(list(self._futures))
            except BaseException:
                self.stop.set()
                with self._lock:
                    started = list(self._futures)
                wait(started)
                for copy in copies:
                    copy.suspend()
                raise
        order = {rel: index for index, (rel, _) in enumerate(wanted)}
        return sorted(self.results, key=lambda r: order[r.path])

    def submit(self, copy: _Copy, ranges: Sequence[Range]) -> None:
        assert self._pool is not None
        with self._lock:
            self._futures.extend(self._pool.submit(copy.fetch, rng) for rng in ranges)

    def done(self, result: FileResult) -> None:
        with self._lock:
            self.results.append(result)
        self.progress.file_done(result)

    def _wait(self, futures: list[Future[Any]]) -> list[Any]:
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in finished:
            error = future.exception()
            if error is not None and not isinstance(error, _Aborted):
                raise error
        wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        real = [e for e in errors if not isinstance(e, _Aborted)]
        if real:
            raise real[0]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    def _prepare(self, relative: str, obj: ObjectInfo) -> _Copy | None:
        """Settle one file without downloading: present and verified (None), or a copy to run."""
        if self.stop.is_set():
            raise _Aborted()
        target = self.dest / relative
        if not self.verify_existing and self.manifest.vouches_for(relative, obj, target):
            self.done(FileResult(relative, obj.size, Action.SKIPPED, Verification.MANIFEST))
            return None
        head = self.store.head_object(bucket=self.bucket, key=obj.key)
        if head.etag != obj.etag or head.size != obj.size:
            raise FetchError(
                f"s3://{self.bucket}/{obj.key} changed while the model was being fetched "
                f"(ETag {obj.etag} -> {head.etag}): run again once the upload has finished")
        unit_sizes: list[int] | None = None
        if head.sha256 or (head.checksum_crc32 and head.checksum_type != "COMPOSITE"):
            unit_sizes = [obj.size]
        elif head.checksum_crc32 or head.etag_is_content_md5:
            unit_sizes = (self.store.part_sizes(bucket=self.bucket, key=obj.key, size=obj.size,
                                                parts_count=obj.parts_count)
                          if obj.parts_count else [obj.size])
        action = Action.DOWNLOADED
        if target.exists():
            local_size = target.stat().st_size
            if local_size == obj.size:
                verified_by = self._verify_file(target, head, obj, unit_sizes)
                if verified_by is not None:
                    self.manifest.record(relative, obj, target, verified_by)
                    self.done(FileResult(relative, obj.size, Action.SKIPPED, verified_by))
                    return None
                log.warning("%s does not match s3://%s/%s (ETag %s); downloading it again",
                            target, self.bucket, obj.key, obj.etag)
            if local_size >= obj.size:
                target.unlink()
                action = Action.REPLACED
        copy = _Copy(job=self, relative=relative, obj=obj, head=head, unit_sizes=unit_sizes,
                     target=target, action=action)
        kept = copy.open()
        self.progress.file_started(path=relative, size=obj.size, offset=kept)
        return copy

    def _verify_file(self, path: Path, head: ObjectHead, obj: ObjectInfo,
                     unit_sizes: list[int] | None) -> Verification | None:
        """How an existing complete file was verified, or None when it does not match."""
        verification = _verification(head)
        if unit_sizes is None:
            return verification
        digests = []
        with open(path, "rb") as handle:
            for unit in units_of(unit_sizes):
                digest, left = _new_hash(head), unit.length
                while left and (chunk := handle.read(min(_READ_BACK, left))):
                    digest.update(chunk)
                    left -= len(chunk)
                digests.append(digest.digest())
        expected = {Verification.SHA256: head.sha256,
                    Verification.CRC32: head.checksum_crc32}.get(verification, head.etag)
        return verification if _combine(head, obj, digests) == expected else None
