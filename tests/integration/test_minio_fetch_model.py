"""The model loader against a real MinIO: copy, re-run, resume, corruption, errors, the CLI."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from click.testing import CliRunner

from sovereign.cli import main as cli
from sovereign_dev.minio import KMS_KEY_NAME, MinioServer
from sovereign.services.fetch_model import (
    LOCK_NAME,
    MANIFEST_NAME,
    Action,
    EmptySource,
    FetchError,
    FetchReport,
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


def test_files_copied_by_another_tool_are_verified_by_hashing_not_downloaded(
        me, minio_bucket_name, model, tmp_path):
    for relative, body in model.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(body)

    report = fetch(me, minio_bucket_name, tmp_path)

    assert report.paths(Action.SKIPPED) == sorted(model)
    assert {f.verified_by for f in report.files} == {Verification.ETAG}
    assert report.bytes_downloaded == 0


def test_a_truncated_file_is_resumed_with_only_the_missing_bytes(me, minio_bucket_name, model,
                                                                 tmp_path):
    fetch(me, minio_bucket_name, tmp_path)
    kept = 3 * MiB + 17
    with open(tmp_path / BIG, "r+b") as handle:
        handle.truncate(kept)

    report = fetch(me, minio_bucket_name, tmp_path)

    resumed = {f.path: f for f in report.files}[BIG]
    assert (resumed.action, resumed.verified_by) == (Action.RESUMED, Verification.ETAG)
    assert resumed.bytes_downloaded == len(model[BIG]) - kept
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
        handle.truncate(MiB)
        handle.seek(10)
        handle.write(b"not the bytes the store has")

    report = fetch(me, minio_bucket_name, tmp_path)

    result = {f.path: f for f in report.files}[BIG]
    assert (result.action, result.integrity_failures) == (Action.DOWNLOADED, 1)
    assert result.bytes_downloaded == len(model[BIG]) - MiB + len(model[BIG])
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
    responses run past ``limit`` bytes, mid-body, as a flaky network would."""

    def __init__(self, upstream_port: int, *, limit: int, cuts: int) -> None:
        self._upstream_port, self._limit, self._cuts = upstream_port, limit, cuts
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

    def _take_cut(self) -> bool:
        with self._lock:
            self._cuts -= 1
            return self._cuts >= 0

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(64 * 1024):
                if limit is not None and sent <= limit < sent + len(data) and self._take_cut():
                    sink.sendall(data[:limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
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
