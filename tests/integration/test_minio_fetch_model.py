"""The model loader against a real MinIO: copy, re-run, resume, corruption, errors, the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from click.testing import CliRunner

from sovereign.cli import main as cli
from sovereign_dev.minio import KMS_KEY_NAME, MinioServer
from sovereign.services.fetch_parts import Journal
from sovereign.services.fetch_model import (
    LOCK_NAME,
    MANIFEST_NAME,
    Action,
    EmptySource,
    FetchError,
    FetchReport,
    IntegrityError,
    RegionNotAllowed,
    Verification,
    fetch_model,
)
from sovereign.stores.credentials import Credentials
from sovereign.stores.s3 import S3Store

pytestmark = pytest.mark.minio
MiB = 1024 * 1024
PREFIX = "models/tiny"
BIG = "model-00001-of-00002.safetensors"


def store_of(server: MinioServer) -> S3Store:
    return S3Store(endpoint=server.endpoint, region=server.region,
                   credentials=Credentials(access_key_id=server.access_key,
                                           secret_access_key=server.secret_key),
                   path_style=True)


def model_files() -> dict[str, bytes]:
    """A small model directory: configs, nested tokenizer files and two weight shards.

    The first shard is over 8 MiB and uploaded in 5 MiB parts, so its ETag is a multipart one.
    """
    return {
        "config.json": b'{"architectures": ["TinyForCausalLM"], "hidden_size": 64}',
        "generation_config.json": b'{"do_sample": false}',
        "tokenizer/tokenizer.json": b'{"model": {"vocab": {}}}' * 400,
        "tokenizer/extra/special_tokens_map.json": b'{"eos_token": "</s>"}',
        BIG: os.urandom(9 * MiB + 12345),
        "model-00002-of-00002.safetensors": os.urandom(2 * MiB + 7),
    }


@pytest.fixture
def me(minio_servers) -> MinioServer:
    return minio_servers["me-central-1"]


@pytest.fixture
def model(me, minio_bucket_name) -> dict[str, bytes]:
    """The model uploaded under models/tiny/, next to a "folder" marker and another model."""
    client = me.client()
    client.create_bucket(Bucket=minio_bucket_name)
    files = model_files()
    multipart = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    for relative, body in files.items():
        client.upload_fileobj(io.BytesIO(body), minio_bucket_name, f"{PREFIX}/{relative}",
                              Config=multipart)
    client.put_object(Bucket=minio_bucket_name, Key=f"{PREFIX}/", Body=b"")
    client.put_object(Bucket=minio_bucket_name, Key="models/other/config.json", Body=b"{}")
    return files


def fetch(me: MinioServer, bucket: str, dest: Path, **options) -> FetchReport:
    return fetch_model(store=store_of(me), bucket=bucket, path=PREFIX, dest=dest,
                       allowed_regions=["me-central-1"], **options)


def assert_same_files(dest: Path, files: dict[str, bytes]) -> None:
    found = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert found == set(files) | {MANIFEST_NAME, LOCK_NAME}, "no partial files, nothing else"
    for relative, body in files.items():
        assert (dest / relative).read_bytes() == body, relative


def test_copies_the_model_directory_and_verifies_every_file(me, minio_bucket_name, model, tmp_path):
    dest = tmp_path / "volume"
    report = fetch(me, minio_bucket_name, dest)

    assert report.paths(Action.DOWNLOADED) == sorted(model)
    assert {f.verified_by for f in report.files} == {Verification.ETAG}
    assert report.bytes_downloaded == report.total_bytes == sum(map(len, model.values()))
    assert_same_files(dest, model)
    assert report.summary().startswith(f"s3://{minio_bucket_name}/{PREFIX}/ -> {dest}: 6 files")


def test_a_path_naming_one_object_copies_that_file_alone(me, minio_bucket_name, model, tmp_path):
    """llama.cpp's weights are one GGUF file: its key as the path copies it under its base name,
    not its neighbours, and a second run downloads nothing."""
    client = me.client()
    gguf = b"GGUF" + os.urandom(3 * MiB)
    client.put_object(Bucket=minio_bucket_name, Key="models/gguf/tiny.gguf", Body=gguf)
    client.put_object(Bucket=minio_bucket_name, Key="models/gguf/tiny.gguf.sha256", Body=b"beside it")
    dest = tmp_path / "volume"

    report = fetch_model(store=store_of(me), bucket=minio_bucket_name, path="models/gguf/tiny.gguf",
                         dest=dest, allowed_regions=["me-central-1"])
    again = fetch_model(store=store_of(me), bucket=minio_bucket_name, path="models/gguf/tiny.gguf",
                        dest=dest, allowed_regions=["me-central-1"])

    assert report.paths(Action.DOWNLOADED) == ["tiny.gguf"]
    assert_same_files(dest, {"tiny.gguf": gguf})
    assert report.summary().startswith(f"s3://{minio_bucket_name}/models/gguf/tiny.gguf -> {dest}: 1 files")
    assert again.paths(Action.SKIPPED) == ["tiny.gguf"] and again.bytes_downloaded == 0


def test_a_second_run_on_a_complete_directory_downloads_nothing(me, minio_bucket_name, model,
                                                                tmp_path):
    fetch(me, minio_bucket_name, tmp_path)
    again = fetch(me, minio_bucket_name, tmp_path)

    assert again.paths(Action.SKIPPED) == sorted(model)
    assert {f.verified_by for f in again.files} == {Verification.MANIFEST}
    assert again.bytes_downloaded == 0
    assert_same_files(tmp_path, model)


def test_after_a_reboot_files_are_hashed_again_unless_they_were_flushed(me, minio_bucket_name, model,
                                                                          tmp_path):
    """Files are not fsynced: the manifest vouches for them only in the boot that wrote them.
    With ``durable`` (a volume other nodes read) they are, and it vouches for them anywhere."""
    fetch(me, minio_bucket_name, tmp_path / "local")
    fetch(me, minio_bucket_name, tmp_path / "shared", durable=True)
    for volume in ("local", "shared"):
        manifest = tmp_path / volume / MANIFEST_NAME
        data = json.loads(manifest.read_text())
        for entry in data["files"].values():
            entry["boot"] = entry["boot"] and "an-earlier-boot"
        manifest.write_text(json.dumps(data))

    after_reboot = fetch(me, minio_bucket_name, tmp_path / "local")
    shared = fetch(me, minio_bucket_name, tmp_path / "shared")

    assert {f.verified_by for f in after_reboot.files} == {Verification.ETAG}, "hashed again"
    assert after_reboot.bytes_downloaded == 0 and after_reboot.paths(Action.SKIPPED) == sorted(model)
    assert {f.verified_by for f in shared.files} == {Verification.MANIFEST}


def test_files_copied_by_another_tool_are_verified_by_hashing_not_downloaded(
        me, minio_bucket_name, model, tmp_path):
    for relative, body in model.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(body)

    report = fetch(me, minio_bucket_name, tmp_path)

    assert report.paths(Action.SKIPPED) == sorted(model)
    assert {f.verified_by for f in report.files} == {Verification.ETAG}
    assert report.bytes_downloaded == 0


def test_a_truncated_file_keeps_its_whole_parts_and_fetches_the_rest(me, minio_bucket_name, model,
                                                                     tmp_path):
    """Bytes of a truncated copy are kept by whole ranges (1 MiB here); the ETag at the end
    vouches for them."""
    fetch(me, minio_bucket_name, tmp_path)
    with open(tmp_path / BIG, "r+b") as handle:
        handle.truncate(3 * MiB + 17)

    report = fetch(me, minio_bucket_name, tmp_path, part_size=MiB)

    resumed = {f.path: f for f in report.files}[BIG]
    assert (resumed.action, resumed.verified_by) == (Action.RESUMED, Verification.ETAG)
    assert resumed.bytes_downloaded == len(model[BIG]) - 3 * MiB
    assert report.bytes_downloaded == resumed.bytes_downloaded
    assert_same_files(tmp_path, model)


@pytest.mark.parametrize("victim", ["config.json", BIG])
def test_a_corrupted_file_is_detected_and_replaced(me, minio_bucket_name, model, tmp_path, victim):
    fetch(me, minio_bucket_name, tmp_path)
    with open(tmp_path / victim, "r+b") as handle:
        handle.seek(len(model[victim]) // 2)
        handle.write(b"\xff\x00")

    report = fetch(me, minio_bucket_name, tmp_path)

    assert report.paths(Action.REPLACED) == [victim]
    assert report.bytes_downloaded == len(model[victim])
    assert_same_files(tmp_path, model)


def test_verify_existing_finds_corruption_that_kept_size_and_mtime(me, minio_bucket_name, model,
                                                                   tmp_path):
    fetch(me, minio_bucket_name, tmp_path)
    path = tmp_path / "model-00002-of-00002.safetensors"
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"bitrot")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    trusting = fetch(me, minio_bucket_name, tmp_path)
    checking = fetch(me, minio_bucket_name, tmp_path, verify_existing=True)

    assert trusting.bytes_downloaded == 0, "the manifest vouches for an unchanged size and mtime"
    assert checking.paths(Action.REPLACED) == [path.name]
    assert_same_files(tmp_path, model)


def test_a_resumed_file_that_fails_verification_is_downloaded_whole(me, minio_bucket_name, model,
                                                                    tmp_path):
    fetch(me, minio_bucket_name, tmp_path)
    with open(tmp_path / BIG, "r+b") as handle:
        handle.truncate(6 * MiB)
        handle.seek(10)
        handle.write(b"not the bytes the store has")

    report = fetch(me, minio_bucket_name, tmp_path, part_size=MiB)

    result = {f.path: f for f in report.files}[BIG]
    assert (result.action, result.integrity_failures) == (Action.DOWNLOADED, 1)
    assert result.bytes_downloaded == len(model[BIG]) - 6 * MiB + len(model[BIG])
    assert_same_files(tmp_path, model)


def test_sse_kms_objects_whose_etag_is_no_md5_are_checked_by_size_and_said_so(
        me, minio_bucket_name, model, tmp_path, caplog):
    body = b"weights encrypted under a KMS key"
    me.client().put_object(Bucket=minio_bucket_name, Key=f"{PREFIX}/kms.bin", Body=body,
                           ServerSideEncryption="aws:kms", SSEKMSKeyId=KMS_KEY_NAME)

    report = fetch(me, minio_bucket_name, tmp_path)

    result = {f.path: f for f in report.files}["kms.bin"]
    assert (result.action, result.verified_by) == (Action.DOWNLOADED, Verification.SIZE)
    assert (tmp_path / "kms.bin").read_bytes() == body
    assert "is not the MD5 of its content" in caplog.text and "encryption aws:kms" in caplog.text


def test_two_loaders_sharing_a_volume_download_each_file_once(me, minio_bucket_name, model,
                                                             tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda _: fetch(me, minio_bucket_name, tmp_path), range(2)))

    assert sorted(r.bytes_downloaded for r in reports) == [0, reports[0].total_bytes]
    assert_same_files(tmp_path, model)


def test_files_not_in_the_store_are_reported_and_left_alone(me, minio_bucket_name, model, tmp_path):
    (tmp_path / "stale.safetensors").write_bytes(b"old revision")
    report = fetch(me, minio_bucket_name, tmp_path)
    assert report.extraneous == ["stale.safetensors"]
    assert (tmp_path / "stale.safetensors").read_bytes() == b"old revision"


def test_an_empty_path_names_the_prefix_and_what_exists_beside_it(me, minio_bucket_name, model,
                                                                  tmp_path):
    with pytest.raises(EmptySource) as caught:
        fetch_model(store=store_of(me), bucket=minio_bucket_name, path="models/tiy", dest=tmp_path)
    assert str(caught.value) == (
        f"no objects under s3://{minio_bucket_name}/models/tiy/ at {me.endpoint}: check the model "
        f"path (models[].source.path, --path); prefixes under s3://{minio_bucket_name}/models/: "
        "models/other/, models/tiny/")


def test_a_missing_bucket_names_it_and_the_fix(me, minio_bucket_name, tmp_path):
    with pytest.raises(FetchError) as caught:
        fetch(me, minio_bucket_name, tmp_path)
    assert f"cannot fetch s3://{minio_bucket_name}/{PREFIX}/" in str(caught.value)
    assert "NoSuchBucket" in str(caught.value) and "Check the bucket name" in str(caught.value)


def test_a_store_outside_the_allowed_regions_is_refused_before_reading(minio_servers,
                                                                       minio_bucket_name, tmp_path):
    eu = minio_servers["eu-west-1"]
    eu.client().create_bucket(Bucket=minio_bucket_name)
    eu.client().put_object(Bucket=minio_bucket_name, Key=f"{PREFIX}/config.json", Body=b"{}")
    dest = tmp_path / "volume"

    with pytest.raises(RegionNotAllowed) as caught:
        fetch(eu, minio_bucket_name, dest)

    assert "is in eu-west-1, outside the allowed regions (me-central-1)" in str(caught.value)
    assert "model weights must come from an in-country store" in str(caught.value)
    assert not dest.exists()


class CuttingProxy:
    """A TCP proxy in front of a server that breaks the first ``cuts`` connections whose
    responses run past ``limit`` bytes, mid-body, as a flaky network would; with ``rate``, it
    also slows every response to that many bytes per second, as a far store would; with
    ``flips``, it inverts one byte at offset ``limit`` of that many responses, as a bad link or
    a bad disk would, and lets the rest through."""

    def __init__(self, upstream_port: int, *, limit: int = 0, cuts: int = 0,
                 rate: float | None = None, flips: int = 0) -> None:
        self._upstream_port, self._limit, self._cuts, self._rate = upstream_port, limit, cuts, rate
        self._flips = flips
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
            for source, sink, limit in ((client, upstream, None), (upstream, client, self._limit)):
                threading.Thread(target=self._pipe, args=(source, sink, limit), daemon=True).start()

    def _take_flip(self) -> bool:
        with self._lock:
            self._flips -= 1
            return self._flips >= 0

    def _take_cut(self) -> bool:
        with self._lock:
            self._cuts -= 1
            return self._cuts >= 0

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(64 * 1024):
                if limit is not None and sent <= limit < sent + len(data) and self._take_flip():
                    at = limit - sent
                    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
                elif limit is not None and sent <= limit < sent + len(data) and self._take_cut():
                    sink.sendall(data[:limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
                if limit is not None and self._rate:
                    time.sleep(len(data) / self._rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


@pytest.fixture
def flaky_endpoint(me) -> Iterator[str]:
    proxy = CuttingProxy(me.port, limit=3 * MiB, cuts=2)
    yield f"http://127.0.0.1:{proxy.port}"
    proxy.close()


def test_broken_connections_are_resumed_where_they_stopped(me, minio_bucket_name, model, tmp_path,
                                                           flaky_endpoint, caplog):
    store = S3Store(endpoint=flaky_endpoint, region=me.region,
                    credentials=Credentials(access_key_id=me.access_key,
                                            secret_access_key=me.secret_key), path_style=True)

    report = fetch_model(store=store, bucket=minio_bucket_name, path=PREFIX, dest=tmp_path,
                         concurrency=1)

    resumptions = [r.getMessage() for r in caplog.records if "resuming at byte" in r.getMessage()]
    assert len(resumptions) == 2, resumptions
    assert report.bytes_downloaded == report.total_bytes, "no byte was fetched twice"
    assert report.paths(Action.DOWNLOADED) == sorted(model)
    assert_same_files(tmp_path, model)


def cli_env(server: MinioServer, bucket: str, dest: Path, **overrides: str) -> dict[str, str]:
    """The environment the rendered loader pod gets (Secret keys included)."""
    return {"SOVEREIGN_S3_ENDPOINT": server.endpoint, "SOVEREIGN_S3_REGION": server.region,
            "SOVEREIGN_MODEL_BUCKET": bucket, "SOVEREIGN_MODEL_PATH": PREFIX,
            "SOVEREIGN_MODEL_DIR": str(dest), "SOVEREIGN_ALLOWED_REGIONS": "me-central-1",
            "SOVEREIGN_S3_PATH_STYLE": "true", "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key, **overrides}


def test_the_cli_reads_the_pod_environment_and_logs_plain_lines(me, minio_bucket_name, model,
                                                                tmp_path):
    env = cli_env(me, minio_bucket_name, tmp_path)
    first = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"], env=env)
    second = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"], env=env)

    assert first.exit_code == 0, first.output
    assert f"fetching s3://{minio_bucket_name}/{PREFIX}/: 6 files" in first.output
    assert "downloaded tokenizer/extra/special_tokens_map.json" in first.output
    assert "(6 downloaded); 11.0 MiB downloaded" in first.output
    assert second.exit_code == 0, second.output
    assert "(6 skipped); 0 B downloaded" in second.output
    assert_same_files(tmp_path, model)


def test_the_report_file_says_what_a_shared_cache_holds_and_what_a_refill_read(me, minio_bucket_name, model,
                                                                             tmp_path):
    """What a cache's loader Job leaves in its termination message, which the stack's status shows."""
    report = tmp_path / "termination-log"
    env = cli_env(me, minio_bucket_name, tmp_path / "cache", SOVEREIGN_FETCH_REPORT=str(report))
    first = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"], env=env)
    filled = json.loads(report.read_text())
    second = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"], env=env)
    again = json.loads(report.read_text())

    assert first.exit_code == second.exit_code == 0, first.output + second.output
    size = sum(len(data) for data in model.values())
    assert filled == {"source": f"s3://{minio_bucket_name}/{PREFIX}/", "files": 6, "bytes": size,
                      "downloadedBytes": size, "verified": True}
    assert again == {**filled, "downloadedBytes": 0}


def test_the_cli_progress_bar_ends_with_the_summary(me, minio_bucket_name, model, tmp_path):
    result = CliRunner().invoke(cli, ["fetch-model", "--progress", "bar"],
                                env=cli_env(me, minio_bucket_name, tmp_path))
    assert result.exit_code == 0, result.output
    assert "(6 downloaded); 11.0 MiB downloaded" in result.output


def test_the_cli_exit_codes_say_whose_problem_it_is(me, minio_bucket_name, model, tmp_path):
    empty = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"],
                               env=cli_env(me, minio_bucket_name, tmp_path,
                                           SOVEREIGN_MODEL_PATH="models/missing"))
    half_credentials = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"],
                                          env=cli_env(me, minio_bucket_name, tmp_path,
                                                      AWS_SECRET_ACCESS_KEY=""))
    assert (empty.exit_code, half_credentials.exit_code) == (1, 3)
    assert f"no objects under s3://{minio_bucket_name}/models/missing/" in empty.output
    assert "AWS_SECRET_ACCESS_KEY not set in the environment" in half_credentials.output


def test_rejected_credentials_never_appear_in_output_or_logs(me, minio_bucket_name, model,
                                                             tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, botocore's wire logs included
    wrong_secret = "Wr0ng-secret-that-must-not-leak"
    result = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain"],
                                env=cli_env(me, minio_bucket_name, tmp_path,
                                            AWS_SECRET_ACCESS_KEY=wrong_secret))

    assert result.exit_code == 3
    assert "SignatureDoesNotMatch" in result.output
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in result.output
    for secret in (wrong_secret, me.secret_key):
        assert secret not in result.output and secret not in caplog.text
    assert me.access_key not in result.output
    # botocore's own DEBUG wire log shows the access key id inside the Authorization header; at
    # INFO and above, where a deployment logs, no logger shows it.
    assert all(me.access_key not in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)


# -- the parallel loader: kill and resume, corruption, a changing bucket, odd part sizes -------

LARGE = "large.bin"


@pytest.fixture
def large(me, minio_bucket_name) -> bytes:
    """A 24 MiB object uploaded in parts of 5 MiB + 12345 bytes (no whole number of MiB)."""
    client = me.client()
    client.create_bucket(Bucket=minio_bucket_name)
    body = os.urandom(24 * MiB)
    odd = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB + 12345)
    client.upload_fileobj(io.BytesIO(body), minio_bucket_name, f"{PREFIX}/{LARGE}", Config=odd)
    return body


@pytest.fixture
def slow_endpoint(me) -> Iterator[str]:
    proxy = CuttingProxy(me.port, rate=4 * MiB)
    yield f"http://127.0.0.1:{proxy.port}"
    proxy.close()


def journal_of(dest: Path) -> tuple[Path, Path] | None:
    """The partial file and journal of the large object, once the journal exists."""
    journals = list(dest.glob(f".{LARGE}.*.journal"))
    if not journals:
        return None
    return journals[0].with_name(journals[0].name.replace(".journal", ".partial")), journals[0]


def kill_mid_copy(me: MinioServer, bucket: str, dest: Path, endpoint: str) -> Journal:
    """Run ``sovereign fetch-model`` in a process, SIGKILL it once a quarter of the object is
    verified on disk, and return the journal it left. Ranges are the upload's parts (6Mi holds
    one part of 5 MiB + 12345 bytes), each checked by its own MD5."""
    env = {**os.environ, **cli_env(me, bucket, dest, SOVEREIGN_S3_ENDPOINT=endpoint,
                                   SOVEREIGN_FETCH_PART_SIZE="6Mi",
                                   SOVEREIGN_FETCH_CONCURRENCY="2")}
    process = subprocess.Popen([sys.executable, "-m", "sovereign", "fetch-model"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = journal_of(dest)
            journal = Journal.from_json(found[1].read_text()) if found else None
            if journal is not None and journal.bytes_done >= 6 * MiB:
                break
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            time.sleep(0.02)
        else:
            pytest.fail("the loader did not get a quarter of the way within a minute")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    found = journal_of(dest)
    assert found is not None, "a killed copy keeps its partial file and journal"
    left = Journal.from_json(found[1].read_text())
    assert left is not None and 0 < left.bytes_done < left.size
    return left


def test_a_copy_killed_half_way_resumes_without_fetching_what_it_verified(
        me, minio_bucket_name, large, slow_endpoint, tmp_path):
    kept = kill_mid_copy(me, minio_bucket_name, tmp_path, slow_endpoint)
    assert not (tmp_path / LARGE).exists(), "nothing half-written under the file's own name"

    report = fetch(me, minio_bucket_name, tmp_path)

    result = {f.path: f for f in report.files}[LARGE]
    assert (result.action, result.verified_by) == (Action.RESUMED, Verification.ETAG)
    assert result.bytes_downloaded == len(large) - kept.bytes_done
    assert (tmp_path / LARGE).read_bytes() == large
    assert journal_of(tmp_path) is None and not list(tmp_path.glob(".*.partial"))


def test_a_part_corrupted_on_disk_is_found_on_resume_and_fetched_again(
        me, minio_bucket_name, large, slow_endpoint, tmp_path, caplog):
    kept = kill_mid_copy(me, minio_bucket_name, tmp_path, slow_endpoint)
    partial, _ = journal_of(tmp_path)
    victim = next(r for r in kept.ranges if r.start in kept.done)
    with open(partial, "r+b") as handle:
        handle.seek(victim.start + victim.length // 2)
        handle.write(b"\x00bitrot\xff")

    report = fetch(me, minio_bucket_name, tmp_path)

    result = {f.path: f for f in report.files}[LARGE]
    assert result.bytes_downloaded == len(large) - kept.bytes_done + victim.length
    assert (result.action, result.verified_by) == (Action.RESUMED, Verification.ETAG)
    assert f"bytes {victim.start}-{victim.end - 1} of {partial} changed on disk" in caplog.text
    assert (tmp_path / LARGE).read_bytes() == large


def test_an_object_replaced_during_the_copy_fails_clearly_and_keeps_nothing_of_it(
        me, minio_bucket_name, large, slow_endpoint, tmp_path):
    store = S3Store(endpoint=slow_endpoint, region=me.region,
                    credentials=Credentials(access_key_id=me.access_key,
                                            secret_access_key=me.secret_key), path_style=True)
    outcome: list[BaseException | FetchReport] = []

    def copy() -> None:
        try:
            outcome.append(fetch_model(store=store, bucket=minio_bucket_name, path=PREFIX,
                                       dest=tmp_path, concurrency=2, part_size=MiB))
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            outcome.append(err)

    worker = threading.Thread(target=copy)
    worker.start()
    while journal_of(tmp_path) is None and worker.is_alive():
        time.sleep(0.01)
    me.client().put_object(Bucket=minio_bucket_name, Key=f"{PREFIX}/{LARGE}", Body=b"v2" * MiB)
    worker.join(timeout=120)

    (error,) = outcome
    assert isinstance(error, FetchError)
    assert str(error).startswith(f"s3://{minio_bucket_name}/{PREFIX}/{LARGE} was replaced in the "
                                 "store while it was being copied")
    assert "nothing of it was kept. Run again once the upload has finished" in str(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def upload_parts(client, bucket: str, key: str, parts: list[bytes]) -> None:
    """A multipart upload with exactly these parts, of any sizes S3 allows."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                                         PartNumber=n, Body=body)["ETag"]}
            for n, body in enumerate(parts, start=1)]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": done})


@pytest.mark.parametrize("part_size", [MiB, 16 * MiB])
def test_multipart_objects_with_odd_and_uneven_parts_verify(me, minio_bucket_name, large,
                                                            tmp_path, part_size):
    """Parts of 5 MiB + 12345 bytes (``large``) and parts of three different sizes both verify,
    whether ranges split the parts (1 MiB) or group them (16 MiB)."""
    # Uneven in the middle only: the first and last parts look like an even upload of 6 MiB + 1.
    uneven = [os.urandom(6 * MiB + 1), os.urandom(7 * MiB + 1), os.urandom(5 * MiB + 1), b"tail"]
    upload_parts(me.client(), minio_bucket_name, f"{PREFIX}/uneven.bin", uneven)

    report = fetch(me, minio_bucket_name, tmp_path, part_size=part_size)

    assert {f.path: (f.action, f.verified_by) for f in report.files} == {
        LARGE: (Action.DOWNLOADED, Verification.ETAG),
        "uneven.bin": (Action.DOWNLOADED, Verification.ETAG)}
    assert (tmp_path / LARGE).read_bytes() == large
    assert (tmp_path / "uneven.bin").read_bytes() == b"".join(uneven)


def test_the_cli_logs_rate_and_time_left_not_a_line_per_part(me, minio_bucket_name, large,
                                                             slow_endpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("sovereign.cli.fetch_model._PLAIN_PROGRESS_EVERY_S", 0.05)
    result = CliRunner().invoke(cli, ["fetch-model", "--progress", "plain", "--part-size", "1Mi"],
                                env=cli_env(me, minio_bucket_name, tmp_path,
                                            SOVEREIGN_S3_ENDPOINT=slow_endpoint))

    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "progress:" in line]
    assert 2 <= len(lines) < 24, result.output
    assert all(" MB/s, ETA " in line and " of 24.0 MiB (" in line for line in lines)
    assert f"downloaded {LARGE} (24.0 MiB, 24.0 MiB transferred, verified by etag)" in result.output


def test_a_part_size_below_the_smallest_is_refused_naming_the_flag(me, minio_bucket_name, tmp_path):
    result = CliRunner().invoke(cli, ["fetch-model", "--part-size", "64Ki"],
                                env=cli_env(me, minio_bucket_name, tmp_path))
    assert result.exit_code == 2
    assert "--part-size" in result.output and "below the smallest part size, 1Mi" in result.output


def test_a_declared_sha256_is_what_the_copy_is_checked_against(me, minio_bucket_name, model, tmp_path):
    """Weights uploaded with their SHA-256 in the ``sha256`` metadata are checked by it: the
    right one verifies, a wrong one is refused after one more try."""
    body = os.urandom(3 * MiB + 5)
    client = me.client()
    client.put_object(Bucket=minio_bucket_name, Key=f"{PREFIX}/declared.bin", Body=body,
                      Metadata={"sha256": hashlib.sha256(body).hexdigest()})

    report = fetch(me, minio_bucket_name, tmp_path, part_size=MiB)

    result = {f.path: f for f in report.files}["declared.bin"]
    assert (result.action, result.verified_by) == (Action.DOWNLOADED, Verification.SHA256)
    assert (tmp_path / "declared.bin").read_bytes() == body

    client.put_object(Bucket=minio_bucket_name, Key=f"{PREFIX}/declared.bin", Body=body,
                      Metadata={"sha256": "0" * 64})
    with pytest.raises(IntegrityError) as caught:
        fetch(me, minio_bucket_name, tmp_path / "again", part_size=MiB)
    assert str(caught.value) == (
        f"s3://{minio_bucket_name}/{PREFIX}/declared.bin: the downloaded bytes have SHA-256 "
        f"{hashlib.sha256(body).hexdigest()}, the store says {'0' * 64}; the object or the transfer "
        "is corrupt. Run again; if it persists, re-upload the object")


# -- objects that carry the store's CRC32 checksum (the AWS SDKs' default since 2025) -----------


def sdk_default_client(server: MinioServer):
    """A boto3 client with the SDK's default checksums: uploads leave a CRC32 on every object."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name=server.region,
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))


@pytest.fixture
def checksummed(me, minio_bucket_name) -> dict[str, bytes]:
    """Two objects with the store's CRC32: one multipart (composite, over parts of 5 MiB + 7
    bytes) and one single-part (over the whole object)."""
    client = sdk_default_client(me)
    client.create_bucket(Bucket=minio_bucket_name)
    files = {"multi.bin": os.urandom(13 * MiB), "single.bin": os.urandom(3 * MiB + 1)}
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB + 7)
    for name, body in files.items():
        client.upload_fileobj(io.BytesIO(body), minio_bucket_name, f"{PREFIX}/{name}", Config=parts)
    heads = {name: store_of(me).head_object(bucket=minio_bucket_name, key=f"{PREFIX}/{name}")
             for name in files}
    assert (heads["multi.bin"].checksum_type, heads["single.bin"].checksum_type) == ("COMPOSITE", "FULL_OBJECT")
    return files


@pytest.mark.parametrize("part_size", [MiB, 16 * MiB])
def test_objects_with_the_stores_crc32_are_checked_by_it(me, minio_bucket_name, checksummed,
                                                         tmp_path, part_size):
    report = fetch(me, minio_bucket_name, tmp_path, part_size=part_size)

    assert {f.path: (f.action, f.verified_by) for f in report.files} == {
        name: (Action.DOWNLOADED, Verification.CRC32) for name in checksummed}
    assert_same_files(tmp_path, checksummed)


def test_a_file_of_the_right_size_is_checked_by_the_crc32_not_downloaded(me, minio_bucket_name,
                                                                         checksummed, tmp_path):
    for name, body in checksummed.items():
        (tmp_path / name).write_bytes(body)
    (tmp_path / "single.bin").write_bytes(b"\x00" + checksummed["single.bin"][1:])

    report = fetch(me, minio_bucket_name, tmp_path)

    assert {f.path: (f.action, f.verified_by) for f in report.files} == {
        "multi.bin": (Action.SKIPPED, Verification.CRC32),
        "single.bin": (Action.REPLACED, Verification.CRC32)}
    assert_same_files(tmp_path, checksummed)


def test_a_byte_flipped_on_the_way_is_caught_and_the_file_fetched_again(me, minio_bucket_name,
                                                                        checksummed, tmp_path, caplog):
    proxy = CuttingProxy(me.port, limit=2 * MiB, flips=1)
    store = S3Store(endpoint=f"http://127.0.0.1:{proxy.port}", region=me.region,
                    credentials=Credentials(access_key_id=me.access_key,
                                            secret_access_key=me.secret_key), path_style=True)
    try:
        report = fetch_model(store=store, bucket=minio_bucket_name, path=PREFIX, dest=tmp_path,
                             concurrency=1)
    finally:
        proxy.close()

    (flipped,) = [f for f in report.files if f.integrity_failures]
    assert flipped.integrity_failures == 1 and flipped.verified_by is Verification.CRC32
    assert f"{flipped.path} did not verify (CRC32 checksum " in caplog.text
    assert_same_files(tmp_path, checksummed)
