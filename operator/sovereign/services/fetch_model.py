"""Copy model weights from ``s3://bucket/<path>/`` into the model volume, verified and resumable.

The use case behind ``sovereign fetch-model`` (the Job / init container that runs before the
engine starts). ``path`` is a key prefix (vLLM's directory of weights) or, when nothing lies
under it as a prefix, the key of one object (llama.cpp's single GGUF file), copied into the
destination under its base name. For every object:

- a local file that a previous run verified (the manifest ``.sovereign-fetch.json`` in the
  destination records its size, ETag and mtime) is skipped without reading it, so a re-run on
  a complete directory costs one listing and downloads nothing;
- a local file of the right size but not in the manifest is hashed and checked against the
  object's ETag (MD5, or MD5 of part MD5s for multipart uploads); a mismatch is replaced;
- a shorter local file, or the hidden partial file of an interrupted run, is resumed with a
  ranged GET (``If-Match`` the ETag, so two versions are never stitched together);
- bytes are written to ``.<name>.<etag>.partial`` beside the target, verified, fsynced, and
  renamed into place, so vLLM never sees a half-written file.

Loaders of several replicas sharing one volume take turns (a lock file in the destination).
Objects whose ETag is not an MD5 (SSE-KMS, SSE-C) can only be checked by size; that is logged.
With ``allowed_regions`` the bucket's location is checked first and a store outside them is
refused. Progress goes to a ``Progress`` sink the caller chooses (rich bar or log lines).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sovereign.policy.residency_store import check_location
from sovereign.stores.errors import BucketNotFound, TransferInterrupted
from sovereign.stores.etag import ETagHasher, feed_file
from sovereign.stores.readings import ObjectHead, ObjectInfo
from sovereign.stores.s3 import S3Store

log = logging.getLogger(__name__)

MANIFEST_NAME = ".sovereign-fetch.json"
LOCK_NAME = ".sovereign-fetch.lock"
_PARTIAL_SUFFIX = ".partial"
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
    concurrency: int = 4,
    verify_existing: bool = False,
    attempts: int = 3,
    progress: Progress | None = None,
) -> FetchReport:
    """Make ``dest`` hold a verified copy of every object under ``s3://bucket/path/``.

    ``verify_existing`` re-hashes files the manifest already vouches for. ``attempts`` bounds
    the resumptions of one file after broken connections. Raises ``FetchError`` (input or
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
        job = _Job(store=store, bucket=bucket, dest=dest, manifest=_Manifest(dest / MANIFEST_NAME),
                   verify_existing=verify_existing, attempts=attempts, progress=progress)
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
    return name.startswith(".") and name.endswith(_PARTIAL_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Manifest:
    """``relative path -> {size, etag, mtime_ns, verified_by}`` of files verified by a run.

    Rewritten atomically after every completed file, so an interrupted run keeps what it had
    verified. An unreadable manifest is ignored (files are then re-verified by hashing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
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
        try:
            stat = target.stat()
        except FileNotFoundError:
            return False
        return stat.st_size == obj.size and stat.st_mtime_ns == entry.get("mtime_ns")

    def record(self, relative: str, obj: ObjectInfo, target: Path, verified_by: Verification) -> None:
        entry = {"size": obj.size, "etag": obj.etag, "mtime_ns": target.stat().st_mtime_ns,
                 "verified_by": verified_by.value}
        with self._lock:
            self._files[relative] = entry
            text = json.dumps({"version": _MANIFEST_VERSION, "files": self._files},
                              indent=1, sort_keys=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)


class _Aborted(Exception):
    """Another file failed; this worker stops between chunks."""


@dataclass
class _Job:
    store: S3Store
    bucket: str
    dest: Path
    manifest: _Manifest
    verify_existing: bool
    attempts: int
    progress: Progress
    stop: threading.Event = field(default_factory=threading.Event)

    def run_all(self, wanted: list[tuple[str, ObjectInfo]], *, concurrency: int) -> list[FileResult]:
        with ThreadPoolExecutor(max_workers=max(1, concurrency),
                                thread_name_prefix="fetch") as pool:
            futures = [pool.submit(self.sync, rel, obj) for rel, obj in wanted]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                # Stop the other workers between chunks and report the failure that stopped them.
                self.stop.set()
                for future in futures:
                    future.cancel()
                wait(futures)
                raise next(error for f in futures if not f.cancelled()
                           for error in [f.exception()]
                           if error is not None and not isinstance(error, _Aborted))
        return [f.result() for f in futures]

    def sync(self, relative: str, obj: ObjectInfo) -> FileResult:
        """Make one local file match one object; returns what was done."""
        target = self.dest / relative
        if not self.verify_existing and self.manifest.vouches_for(relative, obj, target):
            return self._done(FileResult(relative, obj.size, Action.SKIPPED, Verification.MANIFEST))
        head = self._head(obj)
        action = Action.DOWNLOADED
        if target.exists():
            local_size = target.stat().st_size
            if local_size == obj.size:
                verified_by = self._verify_file(target, head)
                if verified_by is not None:
                    self.manifest.record(relative, obj, target, verified_by)
                    return self._done(FileResult(relative, obj.size, Action.SKIPPED, verified_by))
                log.warning("%s does not match s3://%s/%s (ETag %s); downloading it again",
                            target, self.bucket, obj.key, obj.etag)
                target.unlink()
                action = Action.REPLACED
            elif local_size < obj.size:
                # A truncated copy (an earlier tool, a full disk): keep its bytes and resume.
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, _partial_path(target, obj.etag))
            else:
                target.unlink()
                action = Action.REPLACED
        result = self._download(relative, obj, head, target, action)
        return self._done(result)

    def _done(self, result: FileResult) -> FileResult:
        self.progress.file_done(result)
        return result

    def _head(self, obj: ObjectInfo) -> _Verifier:
        head = self.store.head_object(bucket=self.bucket, key=obj.key)
        if head.etag != obj.etag or head.size != obj.size:
            raise FetchError(
                f"s3://{self.bucket}/{obj.key} changed while the model was being fetched "
                f"(ETag {obj.etag} -> {head.etag}): run again once the upload has finished")
        part_sizes = None
        if head.etag_is_content_md5 and obj.parts_count:
            part_sizes = self.store.part_sizes(bucket=self.bucket, key=obj.key, size=obj.size,
                                               parts_count=obj.parts_count)
        return _Verifier(head=head, part_sizes=part_sizes)

    def _verify_file(self, path: Path, head: _Verifier) -> Verification | None:
        """How an existing complete file was verified, or None when it does not match."""
        if not head.by_etag:
            return Verification.SIZE
        hasher = head.hasher()
        feed_file(hasher, path)
        return Verification.ETAG if hasher.hexdigest() == head.head.etag else None

    def _download(self, relative: str, obj: ObjectInfo, head: _Verifier, target: Path,
                  action: Action) -> FileResult:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(target, obj.etag)
        self._drop_stale_partials(target, keep=partial)
        transferred = 0
        failures = 0
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            if offset > obj.size:
                partial.unlink()
                offset = 0
            if offset and action is Action.DOWNLOADED:
                action = Action.RESUMED
            hasher = head.hasher()
            if offset:
                feed_file(hasher, partial, length=offset)
            self.progress.file_started(path=relative, size=obj.size, offset=offset)
            transferred += self._stream(obj, partial, offset=offset, hasher=hasher, relative=relative)
            if not head.by_etag or hasher.hexdigest() == obj.etag:
                break
            failures += 1
            partial.unlink()
            if not offset or failures > 1:
                raise IntegrityError(
                    f"s3://{self.bucket}/{obj.key}: the downloaded bytes have ETag "
                    f"{hasher.hexdigest()}, the store says {obj.etag}; the object or the transfer "
                    "is corrupt. Run again; if it persists, re-upload the object")
            # The kept bytes of a resumed file were bad: fetch the whole object once more.
            log.warning("%s did not verify after resuming; downloading it whole", target)
            action = Action.DOWNLOADED if action is Action.RESUMED else action
        os.replace(partial, target)
        _fsync_dir(target.parent)
        verified_by = Verification.ETAG if head.by_etag else Verification.SIZE
        if not head.by_etag:
            log.warning("the ETag of s3://%s/%s is not the MD5 of its content (ETag %s, "
                        "encryption %s): checked its size only", self.bucket, obj.key, obj.etag,
                        "SSE-C" if head.head.customer_key
                        else head.head.server_side_encryption or "none")
        self.manifest.record(relative, obj, target, verified_by)
        return FileResult(relative, obj.size, action, verified_by, transferred, failures)

    def _stream(self, obj: ObjectInfo, partial: Path, *, offset: int, hasher: ETagHasher,
                relative: str) -> int:
        """Append the object's bytes from ``offset`` to ``partial``; resume after broken
        connections up to ``attempts`` times. Returns the bytes transferred."""
        transferred = 0
        tries = 0
        with open(partial, "ab") as out:
            while offset < obj.size:
                try:
                    for chunk in self.store.read_object(bucket=self.bucket, key=obj.key,
                                                        etag=obj.etag, start=offset):
                        if self.stop.is_set():
                            raise _Aborted()
                        out.write(chunk)
                        hasher.update(chunk)
                        offset += len(chunk)
                        transferred += len(chunk)
                        self.progress.advance(path=relative, nbytes=len(chunk))
                    if offset < obj.size:
                        raise TransferInterrupted(
                            f"s3://{self.bucket}/{obj.key} ended at byte {offset} of {obj.size}: "
                            "run again to resume", server_message="the response ended early")
                except TransferInterrupted as err:
                    tries += 1
                    if tries >= self.attempts:
                        raise
                    log.warning("download of s3://%s/%s broke (%s); resuming at byte %d "
                                "(attempt %d of %d)", self.bucket, obj.key,
                                err.server_message or err, offset, tries + 1, self.attempts)
            out.flush()
            os.fsync(out.fileno())
        return transferred

    def _drop_stale_partials(self, target: Path, *, keep: Path) -> None:
        """Partials of another version of the object cannot be resumed: remove them."""
        if not target.parent.exists():
            return
        stem = f".{target.name}."
        for entry in target.parent.iterdir():
            if entry != keep and entry.name.startswith(stem) and entry.name.endswith(_PARTIAL_SUFFIX):
                entry.unlink()


@dataclass(frozen=True)
class _Verifier:
    """How one object can be verified: by ETag (with its part sizes) or only by size."""

    head: ObjectHead
    part_sizes: list[int] | None

    @property
    def by_etag(self) -> bool:
        return self.head.etag_is_content_md5

    def hasher(self) -> ETagHasher:
        return ETagHasher(part_sizes=self.part_sizes)

