"""The model loader's throughput next to boto3's transfer manager, on the same objects.

One local MinIO (``sovereign_dev.minio``), two data sets uploaded once the way users upload
weights (boto3's defaults: multipart in 8 MiB parts above 8 MiB, and the CRC32 checksum the
AWS SDKs add by default, which the loader then checks; ``SOVEREIGN_BENCH_LOADER_CHECKSUMS=none``
uploads without, as older SDKs did, and the loader checks every part's MD5): **one large file**
(``SOVEREIGN_BENCH_LOADER_MIB``, default 1024 MiB, like a GGUF file) and **several files**
(eight of an eighth of that, like safetensors shards). For each, ``RUNS`` times, alternating
which goes first:

- the loader (``services.fetch_model``, what ``sovereign fetch-model`` runs): parallel ranged
  GETs, every part verified against the ETag, fsynced, journalled;
- boto3's ``TransferManager`` (s3transfer) downloading the same objects into another
  directory at the same concurrency and part size: the best raw parallel download boto3 does,
  which verifies nothing and does not fsync.

Reported: MB/s of each (bytes of the data set over wall time, into an empty directory) and
their ratio (goal >= 0.9); and, to tell the cost of verifying from the cost of moving bytes,
the MB/s at which this machine computes the MD5s of 8 MiB parts on all its cores with nothing
else to do (the loader's verification cannot go faster than that). ``SOVEREIGN_BENCH_LOADER_CONCURRENCY`` (default the loader's) and
``SOVEREIGN_BENCH_LOADER_PART_MIB`` (default 16) set both sides. Run by
``python -m bench loader``; prints its progress on stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.manager import TransferManager

from bench.result import Result
from sovereign.services.fetch_model import DEFAULT_CONCURRENCY, fetch_model
from sovereign.stores.credentials import Credentials
from sovereign.stores.s3 import S3Store
from sovereign_dev import build
from sovereign_dev.minio import MinioServer

RUNS = int(os.environ.get("SOVEREIGN_BENCH_LOADER_RUNS", 3))
SIZE = int(os.environ.get("SOVEREIGN_BENCH_LOADER_MIB", 1024)) * 2**20
CONCURRENCY = int(os.environ.get("SOVEREIGN_BENCH_LOADER_CONCURRENCY", DEFAULT_CONCURRENCY))
PART_SIZE = int(os.environ.get("SOVEREIGN_BENCH_LOADER_PART_MIB", 16)) * 2**20
CHECKSUMS = os.environ.get("SOVEREIGN_BENCH_LOADER_CHECKSUMS", "crc32") != "none"
CHECK = "CRC32" if CHECKSUMS else "MD5"
SHARDS = 8
BUCKET = "bench-loader"
REGION = "me-central-1"
GOAL = 0.9


def run() -> list[Result]:
    build.ensure_all(["minio"])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        work = Path(tmp)
        with MinioServer(region=REGION, root=work / "minio", kms=False) as server:
            client = _client(server, checksums=CHECKSUMS)
            client.create_bucket(Bucket=BUCKET)
            sets = {"one large file": {"large/model.gguf": SIZE},
                    f"{SHARDS} files": {f"shards/model-{i:05d}.safetensors": SIZE // SHARDS
                                        for i in range(SHARDS)}}
            _say(f"uploading {SIZE / 2**20:.0f} MiB twice (one file, {SHARDS} files) to MinIO")
            _upload(client, work / "source", sets)
            store = S3Store(endpoint=server.endpoint, region=server.region, path_style=True,
                            credentials=Credentials(access_key_id=server.access_key,
                                                    secret_access_key=server.secret_key),
                            max_connections=CONCURRENCY + 2)
            manager_client = _client(server, checksums=False)
            for label, objects in sets.items():
                prefix = next(iter(objects)).partition("/")[0]
                loader = Result(f"{label}: loader ({CHECK} of every part checked), c={CONCURRENCY}", "MB/s")
                boto = Result(f"{label}: boto3 TransferManager (unverified), c={CONCURRENCY}", "MB/s")
                ratio = Result(f"{label}: loader / TransferManager (goal >= {GOAL})", "x")
                total = sum(objects.values())
                for attempt in range(1, RUNS + 1):
                    timings: dict[str, float] = {}
                    order = ["loader", "boto3"] if attempt % 2 else ["boto3", "loader"]
                    for who in order:
                        dest = work / who
                        shutil.rmtree(dest, ignore_errors=True)
                        dest.mkdir()
                        # Start each copy with no dirty pages of the last one still being
                        # written back: the disk's backlog is not what is measured.
                        os.sync()
                        started = time.monotonic()
                        if who == "loader":
                            fetch_model(store=store, bucket=BUCKET, path=prefix, dest=dest,
                                        concurrency=CONCURRENCY, part_size=PART_SIZE)
                        else:
                            _transfer_manager(manager_client, objects, dest)
                        timings[who] = time.monotonic() - started
                        shutil.rmtree(dest)
                    loader.samples.append(round(total / timings["loader"] / 1e6, 1))
                    boto.samples.append(round(total / timings["boto3"] / 1e6, 1))
                    ratio.samples.append(round(timings["boto3"] / timings["loader"], 2))
                    _say(f"{label} run {attempt}/{RUNS}: loader {timings['loader']:.2f}s, "
                         f"TransferManager {timings['boto3']:.2f}s")
                _say(f"{label}: median ratio {statistics.median(ratio.samples):.2f}x (goal >= {GOAL}x)")
                results += [loader, boto, ratio]
    results.append(_md5_ceiling())
    return results


def _md5_ceiling() -> Result:
    """MB/s of MD5 over 8 MiB parts on every core at once, as the loader hashes parts."""
    result = Result(f"MD5 of 8 MiB parts on all {os.cpu_count()} cores, nothing else (ceiling of "
                    "verifying)", "MB/s")
    part = os.urandom(8 * 2**20)
    parts = SIZE // len(part)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for _ in range(RUNS):
            started = time.monotonic()
            list(pool.map(lambda _: hashlib.md5(part, usedforsecurity=False).digest(), range(parts)))
            result.samples.append(round(parts * len(part) / (time.monotonic() - started) / 1e6, 1))
    return result


def _upload(client: object, source: Path, sets: dict[str, dict[str, int]]) -> None:
    """Random bytes written to disk once, uploaded with boto3's default multipart settings."""
    source.mkdir()
    for objects in sets.values():
        for key, size in objects.items():
            path = source / key.replace("/", "_")
            with open(path, "wb") as out:
                for _ in range(0, size, 2**24):
                    out.write(os.urandom(min(2**24, size - out.tell())))
            client.upload_file(str(path), BUCKET, key)  # type: ignore[attr-defined]
            path.unlink()


def _client(server: MinioServer, *, checksums: bool) -> object:
    """A boto3 client; ``checksums``: the SDK's default CRC32 on uploads, else none at all (the
    transfer manager's downloads then check nothing, as before boto3 1.36)."""
    import boto3

    when = "when_supported" if checksums else "when_required"
    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name=server.region,
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      max_pool_connections=CONCURRENCY + 2,
                      request_checksum_calculation=when, response_checksum_validation=when))


def _transfer_manager(client: object, objects: dict[str, int], dest: Path) -> None:
    config = TransferConfig(max_concurrency=CONCURRENCY, multipart_chunksize=PART_SIZE,
                            multipart_threshold=PART_SIZE)
    with TransferManager(client, config) as manager:
        futures = [manager.download(BUCKET, key, str(dest / key.replace("/", "_")))
                   for key in objects]
        for future in futures:
            future.result()


def _say(message: str) -> None:
    print(f"[loader {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
