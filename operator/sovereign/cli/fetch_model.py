"""``sovereign fetch-model``: copy model weights from an in-country bucket into the model volume.

Runs as the init container before the engine starts, or as a Job filling a shared cache.
Inputs come from flags or, as the rendered pod sets them, from the environment; credentials
only from the environment a Secret injects (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``;
neither set: ambient credentials such as IRSA), never from flags, which other users of the node
can read. The work is done by ``services.fetch_model``; this module parses input, shows progress
(a rich bar on a terminal, plain log lines otherwise: bytes, MB/s and ETA every few seconds, a
line per finished file) and maps errors to exit codes. Auto-registered by ``sovereign.cli``.

The contract a caller (the rendered pod, a cache Job) relies on, kept stable:

- ``SOVEREIGN_S3_REGION``, ``SOVEREIGN_MODEL_BUCKET``, ``SOVEREIGN_MODEL_DIR`` (required);
  ``SOVEREIGN_S3_ENDPOINT``, ``SOVEREIGN_MODEL_PATH`` (a prefix or one key),
  ``SOVEREIGN_ALLOWED_REGIONS`` (comma-separated), ``SOVEREIGN_S3_PATH_STYLE`` (``true``);
- ``SOVEREIGN_FETCH_CONCURRENCY`` (ranged GETs at once, default 8),
  ``SOVEREIGN_FETCH_PART_SIZE`` (bytes per GET, default ``16Mi``) and
  ``SOVEREIGN_FETCH_FSYNC`` (``true``: flush each file before recording it, for volumes other
  nodes read);
- the destination afterwards holds the verified files and ``.sovereign-fetch.json``; a run
  killed at any point is resumed by running the same command again;
- exit 0 done, 1 the source is not acceptable, 3 an environment problem (see ``--help``).

Imports stay light (no Kubernetes client, no Kopf, no pydantic models): the loader's start is
part of every replica's start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from typing import TYPE_CHECKING

import click

from sovereign.services.fetch_model import (
    DEFAULT_CONCURRENCY,
    Action,
    FetchError,
    FetchReport,
    FileResult,
    Verification,
    fetch_model,
    human_bytes,
)
from sovereign.services.fetch_parts import DEFAULT_PART_SIZE, MIN_PART_SIZE, parse_size
from sovereign.stores.credentials import Credentials
from sovereign.stores.errors import BucketNotFound, StoreError
from sovereign.stores.s3 import S3Store

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("sovereign.fetch_model")

# Environment variables the rendered loader pod sets (one per flag).
ENV_ENDPOINT = "SOVEREIGN_S3_ENDPOINT"
ENV_REGION = "SOVEREIGN_S3_REGION"
ENV_BUCKET = "SOVEREIGN_MODEL_BUCKET"
ENV_PATH = "SOVEREIGN_MODEL_PATH"
ENV_DEST = "SOVEREIGN_MODEL_DIR"
ENV_ALLOWED_REGIONS = "SOVEREIGN_ALLOWED_REGIONS"
ENV_PATH_STYLE = "SOVEREIGN_S3_PATH_STYLE"
ENV_CONCURRENCY = "SOVEREIGN_FETCH_CONCURRENCY"
ENV_PART_SIZE = "SOVEREIGN_FETCH_PART_SIZE"
ENV_REPORT = "SOVEREIGN_FETCH_REPORT"
ENV_FSYNC = "SOVEREIGN_FETCH_FSYNC"

_PLAIN_PROGRESS_EVERY_S = 10.0


class _Size(click.ParamType):
    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)
        if size < MIN_PART_SIZE:
            self.fail(f"{value!r} is below the smallest part size, 1Mi", param, ctx)
        return size


@click.command("fetch-model")
@click.option("--endpoint", envvar=[ENV_ENDPOINT, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
              help=f"S3 endpoint URL; unset: AWS S3 of the region. Env: {ENV_ENDPOINT}.")
@click.option("--region", envvar=[ENV_REGION, "AWS_REGION", "AWS_DEFAULT_REGION"], required=True,
              help=f"Region the bucket is in (signs requests). Env: {ENV_REGION} or AWS_REGION.")
@click.option("--bucket", envvar=ENV_BUCKET, required=True, help=f"Bucket. Env: {ENV_BUCKET}.")
@click.option("--path", envvar=ENV_PATH, default="",
              help=f"Key prefix of the model in the bucket; empty: the whole bucket. Env: {ENV_PATH}.")
@click.option("--dest", envvar=ENV_DEST, required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help=f"Local directory to fill (the model volume). Env: {ENV_DEST}.")
@click.option("--allowed-regions", envvar=ENV_ALLOWED_REGIONS, default="",
              help="Comma-separated regions the bucket must be in; any other is refused. "
                   f"Env: {ENV_ALLOWED_REGIONS}.")
@click.option("--path-style/--virtual-hosted-style", envvar=ENV_PATH_STYLE, default=False,
              help="Address the bucket as <endpoint>/<bucket> (MinIO usually needs this). "
                   f"Default virtual-hosted. Env: {ENV_PATH_STYLE}=true.")
@click.option("--concurrency", envvar=ENV_CONCURRENCY, type=click.IntRange(1, 64),
              default=DEFAULT_CONCURRENCY, show_default=True,
              help="Ranged GETs in flight at once, within a large file and across small ones; "
                   f"memory is about 1 MiB each. Env: {ENV_CONCURRENCY}.")
@click.option("--part-size", envvar=ENV_PART_SIZE, type=_Size(), default=DEFAULT_PART_SIZE,
              show_default="16Mi",
              help="Bytes fetched by one GET (16Mi, 64Mi, ...; at least 1Mi); the parts of a "
                   f"multipart upload are never split when they fit. Env: {ENV_PART_SIZE}.")
@click.option("--fsync/--no-fsync", envvar=ENV_FSYNC, default=False, show_default=True,
              help="Flush every file to disk before recording it as verified: for a volume other "
                   "nodes read (a shared cache). Without, the manifest records this boot and a "
                   f"later run after a reboot hashes the files again. Env: {ENV_FSYNC}=true.")
@click.option("--verify-existing", is_flag=True,
              help="Re-hash files an earlier run already verified, instead of trusting its manifest.")
@click.option("--report-file", envvar=ENV_REPORT, type=click.Path(dir_okay=False, path_type=Path),
              help="Write what the run did, as JSON (source, files, bytes, downloadedBytes, verified), to "
                   "this file: a pod's /dev/termination-log, where the operator reads a shared cache's "
                   f"state. Env: {ENV_REPORT}.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "bar", "plain"]),
              default="auto", show_default=True,
              help="auto: a progress bar on a terminal, log lines otherwise.")
def command(endpoint: str | None, region: str, bucket: str, path: str, dest: Path,
            allowed_regions: str, path_style: bool, concurrency: int, part_size: int,
            fsync: bool, verify_existing: bool, report_file: Path | None,
            progress_mode: str) -> None:
    """Copy s3://BUCKET/PATH/ into DEST, in parallel ranged GETs, verified and resumable.

    Files an earlier run verified are skipped, a copy killed half-way continues from the parts
    it verified, every file is checked before it is renamed into place: against the SHA-256 its
    uploader declared (metadata sha256), else the store's CRC32 checksum, else its MD5 ETag
    (part by part for multipart uploads).

    Exit codes: 0 done; 1 the source or its content is not acceptable (missing bucket, empty
    path, region not allowed, corrupt object); 3 an environment problem (endpoint unreachable,
    credentials missing or rejected, no permission, destination not writable).

    \b
    Examples:
      sovereign fetch-model --endpoint https://s3.gov.qa --region me-central-1 \\
          --bucket qa-corpus --path models/qwen2.5-72b/ --dest /models/chat \\
          --allowed-regions me-central-1 --path-style
    """
    bar = progress_mode == "bar" or (progress_mode == "auto" and sys.stderr.isatty())
    regions = [r.strip() for r in allowed_regions.split(",") if r.strip()]
    with _logging_to_stderr(bar=bar) as console:
        try:
            credentials = Credentials.from_mapping(os.environ, source="the environment",
                                                   required=False)
            if credentials is None:
                log.info("AWS_ACCESS_KEY_ID is not set: using ambient credentials (IRSA, "
                         "instance profile)")
            store = S3Store(endpoint=endpoint, region=region, credentials=credentials,
                            path_style=path_style, max_connections=concurrency + 2)
            with _BarProgress(console) if console else _LogProgress() as progress:
                report = fetch_model(store=store, bucket=bucket, path=path, dest=dest,
                                     allowed_regions=regions, concurrency=concurrency,
                                     part_size=part_size, verify_existing=verify_existing,
                                     durable=fsync, progress=progress)
        except (FetchError, BucketNotFound) as err:
            log.error("%s", err)
            sys.exit(1)
        except StoreError as err:
            log.error("%s", err)
            sys.exit(3)
        except OSError as err:
            log.error("cannot write the model to %s: %s: check the volume is mounted writable "
                      "and has room", dest, err)
            sys.exit(3)
        log.info("%s", report.summary())
        if report_file is not None:
            report_file.write_text(json.dumps(report_fields(report), sort_keys=True))


def report_fields(report: FetchReport) -> dict[str, object]:
    """The report file's content: ``verified`` when every file was checked against its object's
    ETag (now or by an earlier run), not only by its size."""
    return {
        "source": report.source,
        "files": len(report.files),
        "bytes": report.total_bytes,
        "downloadedBytes": report.bytes_downloaded,
        "verified": all(f.verified_by is not Verification.SIZE for f in report.files),
    }


@contextlib.contextmanager
def _logging_to_stderr(*, bar: bool) -> Iterator[Console | None]:
    """Show the ``sovereign`` loggers' INFO lines on stderr for the command's duration; with a
    bar, through rich's console (yielded) so log lines and the bar do not garble each other."""
    handler: logging.Handler
    console = None
    if bar:
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(stderr=True)
        handler = RichHandler(console=console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("sovereign")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield console
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _LogProgress:
    """Plain lines for logs: the plan, each file as it finishes, and every few seconds the bytes
    so far, the rate since the start and the time left at that rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done_bytes = 0
        self._fetched = 0
        self._total = 0
        self._counted: dict[str, int] = {}
        self._started = self._last = time.monotonic()

    def __enter__(self) -> _LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def begin(self, *, source: str, files: int, total_bytes: int) -> None:
        self._total = total_bytes
        log.info("fetching %s: %d files, %s", source, files, human_bytes(total_bytes))

    def file_started(self, *, path: str, size: int, offset: int) -> None:
        with self._lock:
            self._done_bytes += offset - self._counted.get(path, 0)
            self._counted[path] = offset
        how = f"resuming at {human_bytes(offset)}" if offset else "downloading"
        log.info("%s %s (%s)", how, path, human_bytes(size))

    def advance(self, *, path: str, nbytes: int) -> None:
        with self._lock:
            self._done_bytes += nbytes
            self._fetched += nbytes
            self._counted[path] = self._counted.get(path, 0) + nbytes
            now = time.monotonic()
            if now - self._last < _PLAIN_PROGRESS_EVERY_S:
                return
            self._last = now
            done, total, fetched = self._done_bytes, self._total, self._fetched
        rate = fetched / max(now - self._started, 1e-6)
        eta = (total - done) / rate if rate else float("inf")
        log.info("progress: %s of %s (%.0f%%), %.0f MB/s, ETA %s", human_bytes(done),
                 human_bytes(total), 100 * done / total if total else 100, rate / 1e6,
                 f"{eta:.0f} s" if eta != float("inf") else "unknown")

    def file_done(self, result: FileResult) -> None:
        with self._lock:
            self._done_bytes += result.size - self._counted.pop(result.path, 0)
        if result.action is Action.SKIPPED:
            log.info("present %s (%s, verified by %s)", result.path, human_bytes(result.size),
                     result.verified_by)
        else:
            log.info("%s %s (%s, %s transferred, verified by %s)", result.action, result.path,
                     human_bytes(result.size), human_bytes(result.bytes_downloaded), result.verified_by)


class _BarProgress:
    """A rich progress display: one bar for all bytes, one per file being downloaded."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             DownloadColumn(binary_units=True),
                             TransferSpeedColumn(), TimeRemainingColumn(), console=console)
        self._lock = threading.Lock()
        self._overall = None
        self._tasks: dict[str, object] = {}
        self._counted: dict[str, int] = {}

    def __enter__(self) -> _BarProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def begin(self, *, source: str, files: int, total_bytes: int) -> None:
        self._overall = self._bar.add_task(f"{source} ({files} files)", total=total_bytes)

    def file_started(self, *, path: str, size: int, offset: int) -> None:
        with self._lock:
            self._bar.advance(self._overall, offset - self._counted.get(path, 0))
            self._counted[path] = offset
            if path not in self._tasks:
                self._tasks[path] = self._bar.add_task(path, total=size)
            self._bar.update(self._tasks[path], completed=offset)

    def advance(self, *, path: str, nbytes: int) -> None:
        with self._lock:
            self._counted[path] = self._counted.get(path, 0) + nbytes
            self._bar.advance(self._overall, nbytes)
            self._bar.advance(self._tasks[path], nbytes)

    def file_done(self, result: FileResult) -> None:
        with self._lock:
            self._bar.advance(self._overall, result.size - self._counted.pop(result.path, 0))
            task = self._tasks.pop(result.path, None)
            if task is not None:
                self._bar.remove_task(task)
        if result.action is not Action.SKIPPED:
            log.info("%s %s (%s)", result.action, result.path, human_bytes(result.size))
