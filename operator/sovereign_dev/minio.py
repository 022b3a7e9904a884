"""Real MinIO servers on loopback, one per region: the object stores of the tests and the dev cluster.

A server can listen on another host address instead (``host``): the real node's gateway
(``DevCluster.pod_reachable_host``), where its pods and this machine both reach it.

Each ``MinioServer`` is one ``minio server`` process with its own data directory, a free
loopback port (``processes.free_port``; started again on a new one if another process takes it first), its own root credentials and ``MINIO_REGION``/``MINIO_SITE_REGION`` set to its
region, so GetBucketLocation answers with that region as an in-country store would. By
default a static KMS key is configured (``MINIO_KMS_SECRET_KEY``), because without a KMS MinIO
refuses default bucket encryption; ``kms=False`` gives a plain server for the "unsupported"
paths. ``MinioFleet`` starts one server per region and stops them all.

The binary comes from ``devcluster.build.ensure("minio")`` (built once from its pinned Go
module). Processes run in their own session and are stopped by process group (SIGTERM, then
SIGKILL), so none is left behind; given a ``processes.ProcessLedger``, each start is recorded
there too, for a later run to clean up after a killed one. Used by ``devcluster.minio_fixtures`` and ``sovereign dev up``.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sovereign_dev.processes import OwnedServer, ProcessLedger, free_port, port_taken, recorded

DEFAULT_REGIONS = ("me-central-1", "eu-west-1")
KMS_KEY_NAME = "sovereign-dev"  # the static key's name, for SSE-KMS requests (SSEKMSKeyId)
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 3


class MinioStartError(RuntimeError):
    """A MinIO server did not become ready; the message carries the tail of its log."""


class MinioServer(OwnedServer):
    """One MinIO process serving one region from ``root`` (data, certs and log live there).

    ``access_key``/``secret_key`` default to fresh random values. The KMS key, when enabled,
    is kept in ``root`` so a restarted server can still read the objects it encrypted.
    """

    stop_grace = 15.0  # MinIO flushes its data on SIGTERM

    def __init__(
        self,
        *,
        region: str,
        root: Path,
        access_key: str | None = None,
        secret_key: str | None = None,
        kms: bool = True,
        binary_dir: Path | None = None,
        ledger: ProcessLedger | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        # Loopback by default; the real node's gateway when its pods must reach the server too.
        self.host = host
        self.region = region
        self.root = Path(root)
        self.access_key = access_key or f"sov-{secrets.token_hex(6)}"
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.kms = kms
        self.port = 0
        self._binary_dir = binary_dir
        self._ledger = ledger
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"MinioServer(region={self.region!r}, endpoint={self.endpoint!r}, {state})"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "minio.log"

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group), None when not started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> Any:
        """A boto3 S3 client for this server, signed for its region, path-style addressing."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )

    def bytes_sent(self) -> int:
        """Bytes this server has sent in answer to S3 requests since it started (object bodies,
        listings, headers): MinIO's own count, from its Prometheus metrics, as seen from outside
        any client. Counted when the answer is sent, so it is current at once."""
        import re
        import urllib.request

        with urllib.request.urlopen(f"{self.endpoint}/minio/metrics/v3/api/requests", timeout=10) as answer:
            text = answer.read().decode()
        found = re.search(r'^minio_api_requests_traffic_sent_bytes\{[^}]*type="s3"[^}]*\} (\S+)$', text, re.M)
        return int(float(found.group(1))) if found else 0

    def add_replication_target(self, *, bucket: str, target: MinioServer, target_bucket: str) -> str:
        """Register ``target``'s bucket as a replication target of ``bucket``; returns its ARN.

        MinIO only accepts replication rules whose destination ARN it issued itself through its
        admin API (what ``mc admin bucket remote add`` calls), so a test that wants a real
        replication rule to another region's server needs this. Both buckets must have
        versioning enabled. The ARN names the target's region:
        ``arn:minio:replication:<region>:<id>:<bucket>``.
        """
        body = json.dumps({
            "endpoint": f"{target.host}:{target.port}", "secure": False, "type": "replication",
            "targetbucket": target_bucket, "region": target.region, "api": "s3v4",
            "credentials": {"accessKey": target.access_key, "secretKey": target.secret_key},
        }).encode()
        url = f"{self.endpoint}/minio/admin/v3/set-remote-target?bucket={bucket}"
        response = self._admin_request("PUT", url, _madmin_encrypt(self.secret_key, body))
        return json.loads(response)

    def _admin_request(self, method: str, url: str, body: bytes) -> bytes:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method=method, url=url, data=body)
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", self.region).add_auth(request)
        prepared = urllib.request.Request(url, data=body, method=method,
                                          headers=dict(request.headers.items()))
        try:
            with urllib.request.urlopen(prepared, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"MinIO admin {method} {url} failed: {err.code} "
                               f"{err.read().decode(errors='replace')}") from None

    def start(self, *, timeout: float = 180.0) -> None:
        """Start the server and wait until ``/minio/health/ready`` answers 200.

        Another process can take the probed port before MinIO binds it; that case is retried
        on a new port. Any other failure stops the process and raises ``MinioStartError``.
        """
        if self.running:
            return
        binary = self._binary()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port(host=self.host)
            self._spawn(binary)
            try:
                self._wait_ready(timeout=timeout)
                return
            except MinioStartError as err:
                self.stop()
                if not port_taken(str(err)) or attempt == _PORT_ATTEMPTS:
                    raise


    def _binary(self) -> Path:
        if self._binary_dir is None:
            from sovereign_dev import build

            self._binary_dir = build.ensure("minio")
        return self._binary_dir / "minio"

    def _spawn(self, binary: Path) -> None:
        for directory in (self.root / "data", self.root / "certs"):
            directory.mkdir(parents=True, exist_ok=True)
        command = [str(binary), "server", "--address", f"{self.host}:{self.port}",
                   "--certs-dir", str(self.root / "certs"), str(self.root / "data")]
        # Start from the caller's environment minus any MinIO settings it happens to carry.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
        env.update({
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_REGION": self.region,
            "MINIO_SITE_REGION": self.region,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            # Its Prometheus metrics without a token: the benches and tests read from outside
            # how many bytes the store sent (``bytes_sent``).
            "MINIO_PROMETHEUS_AUTH_TYPE": "public",
        })
        if self.kms:
            env["MINIO_KMS_SECRET_KEY"] = self._kms_key()
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self._ledger is not None:
            self._ledger.record(recorded(name=f"minio-{self.region}", pid=self._process.pid,
                                         log=self.log_path))
        atexit.register(self.stop)

    def _kms_key(self) -> str:
        path = self.root / "kms-key"
        if not path.exists():
            path.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
            path.chmod(0o600)
        return f"{KMS_KEY_NAME}:{path.read_text().strip()}"

    def _wait_ready(self, *, timeout: float) -> None:
        url = f"{self.endpoint}/minio/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise MinioStartError(
                    f"MinIO for {self.region} exited with code {self._process.returncode} before "
                    f"it was ready; {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise MinioStartError(
                    f"MinIO for {self.region} was not ready at {url} after {timeout:.0f}s; "
                    f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        """The last lines of the log, headed by its path, for error messages."""
        lines = self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        return f"last lines of {self.log_path}:\n" + "\n".join(lines)


class MinioFleet:
    """One ``MinioServer`` per region under ``root/<region>``, started and stopped together."""

    def __init__(self, *, root: Path, regions: Sequence[str] = DEFAULT_REGIONS,
                 kms: bool = True, ledger: ProcessLedger | None = None,
                 host: str = "127.0.0.1") -> None:
        self.servers = {
            region: MinioServer(region=region, root=Path(root) / region, kms=kms, ledger=ledger,
                                host=host)
            for region in regions
        }

    def start(self, *, timeout: float = 180.0) -> dict[str, MinioServer]:
        try:
            for server in self.servers.values():
                server.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self.servers

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> MinioFleet:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _madmin_encrypt(password: str, data: bytes) -> bytes:
    """Encrypt an admin API request body the way MinIO's madmin.EncryptData does (PBKDF2 flavour).

    Layout: salt(32) | algorithm id (2 = PBKDF2-SHA256 + AES-256-GCM) | nonce(8) | a DARE/sio
    stream. A body under sio's 16 KiB fragment size is one final fragment, sealed with nonce
    ``nonce || seq 1`` and associated data ``0x80 || tag``, where tag authenticates the empty
    message under ``nonce || seq 0`` (secure-io/sio-go's EncryptWriter).
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(data) >= 16 * 1024:
        raise ValueError("admin request bodies over 16 KiB need the multi-fragment sio format")
    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(8)
    aead = AESGCM(hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 8192, 32))
    header_tag = aead.encrypt(nonce + (0).to_bytes(4, "little"), b"", None)
    sealed = aead.encrypt(nonce + (1).to_bytes(4, "little"), data, b"\x80" + header_tag)
    return salt + bytes([0x02]) + nonce + sealed

