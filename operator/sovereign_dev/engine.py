"""llama.cpp's llama-server as a host process, and the tiny models seeded into an in-country bucket.

``LlamaServer`` runs the binary ``build.ensure("llama-server")`` built on a GGUF file (one of
``tinymodel``'s), on a loopback port the server binds itself (``--port 0``; the port is read from
its log, so no other process can take it in between), and waits until ``/health`` answers 200.
The benchmarks time it as "engine start alone"; the engine tests ask it for chat completions and
scrape its ``/metrics``.

``seed_models`` puts the generated models into a bucket under ``models/<name>/<name>.gguf``, the
layout a stack's ``source.path: models/<name>/`` names; the end-to-end test and ``sovereign dev
up`` seed the in-country MinIO with it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sovereign_dev import build, tinymodel
from sovereign_dev.processes import OwnedServer

MODELS_PREFIX = "models"
_LOG_TAIL_LINES = 40
_LISTENING = re.compile(r"listening on http://[^\s:]+:(\d+)")


class EngineStartError(RuntimeError):
    """llama-server did not become healthy; the message carries the tail of its log."""


class LlamaServer(OwnedServer):
    """One llama-server process serving ``model`` as ``alias`` on loopback; logs under ``root``."""

    def __init__(self, *, model: Path, alias: str, root: Path, threads: int = 2, ctx_size: int = 2048,
                 binary: Path | None = None, prefix: Sequence[str] = ()) -> None:
        """``binary`` defaults to the cached build; ``prefix`` runs it through another program
        (``chroot --userspec=... <rootfs>``, with ``binary`` and ``model`` paths inside it)."""
        self.model = Path(model)
        self.alias = alias
        self.root = Path(root)
        self.threads = threads
        self.ctx_size = ctx_size
        self.port = 0
        self._log_start = 0
        self._binary = binary
        self._prefix = tuple(prefix)
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"LlamaServer(alias={self.alias!r}, endpoint={self.endpoint!r}, {state})"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / f"llama-server-{self.alias}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self, binary: Path) -> list[str]:
        """The command line: a rendered pod's flags (model, alias, threads, metrics, no web page,
        offline), on loopback, on a port the server picks, with a fixed context size."""
        return [
            *self._prefix, str(binary), "--host", "127.0.0.1", "--port", "0", "--model", str(self.model),
            "--alias", self.alias, "--ctx-size", str(self.ctx_size),
            "--threads", str(self.threads), "--metrics", "--no-webui", "--offline",
        ]

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server and wait until it listens and ``/health`` answers 200."""
        if self.running:
            return
        binary = self._binary or build.ensure("llama-server") / "llama-server"
        self.root.mkdir(parents=True, exist_ok=True)
        command = self.command(binary)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout=timeout)
        except BaseException:
            self.stop()
            raise


    def chat(self, *, content: str, max_tokens: int = 16, model: str | None = None,
             seed: int | None = None) -> dict[str, Any]:
        """POST one user message to ``/v1/chat/completions``; the decoded JSON answer.

        ``seed`` fixes the sampler's seed, so the same model gives the same answer.
        """
        body: dict[str, Any] = {"model": model or self.alias, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": content}]}
        if seed is not None:
            body["seed"] = seed
        return json.loads(self.get("/v1/chat/completions", data=json.dumps(body).encode()))

    def get(self, path: str, *, data: bytes | None = None, timeout: float = 30.0) -> str:
        """The body of ``path`` (a POST of ``data`` as JSON when given); HTTP errors raise."""
        request = urllib.request.Request(
            self.endpoint + path, data=data,
            headers={"Content-Type": "application/json"} if data is not None else {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()

    def _wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise EngineStartError(
                    f"llama-server ({self.alias}, {self.model}) exited with code "
                    f"{self._process.returncode} before it was healthy; {self._log_tail()}")
            if not self.port:
                self.port = self._listening_port()
            if self.port and self._healthy():
                return
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"llama-server ({self.alias}, {self.model}) was not healthy after "
                    f"{timeout:.0f}s; {self._log_tail()}")
            time.sleep(0.05)

    def _listening_port(self) -> int:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            match = _LISTENING.search(log.read().decode(errors="replace"))
        return int(match.group(1)) if match else 0

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        return f"last lines of {self.log_path}:\n" + "\n".join(lines)


def model_key(name: str) -> str:
    """The object key of tiny model ``name`` in a bucket: ``models/<name>/<name>.gguf``."""
    return f"{MODELS_PREFIX}/{name}/{tinymodel.model(name).file_name}"


def seed_models(*, client: Any, bucket: str, names: Sequence[str] = tuple(tinymodel.MODELS)) -> dict[str, str]:
    """Upload the named tiny models (generated when absent) into ``bucket``; name -> object key.

    ``client`` is a boto3 S3 client of the in-country store (``MinioServer.client()``); the bucket
    must exist. Each object carries its SHA-256 as user metadata (an ETag is no content hash once
    the bucket encrypts); one already there with the same hash is left alone, so seeding is cheap
    to repeat (``sovereign dev up`` after a restart).
    """
    keys: dict[str, str] = {}
    for name in names:
        path, key = tinymodel.ensure(name), model_key(name)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if _stored_sha256(client=client, bucket=bucket, key=key) != digest:
            client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
        keys[name] = key
    return keys


def _stored_sha256(*, client: Any, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("Metadata", {}).get("sha256")
