"""The images built here, imported into a real containerd and run: what the real node's pods get.

A private containerd (Debian's, on its own socket, root and state directories, without its CRI
plugin) imports the archives of ``sovereign_dev.images`` with ``oci.import_image``, exactly as
the real node's harness does, and runs them with ``ctr run`` under the image's own user and a
read-only root filesystem, as the rendered pods do: the operator image answers ``--version``
and, as the model loader init container, copies a model out of a real MinIO into a volume; the
sample client asks a model and logs the answer; the pause image starts.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sovereign.render.loader import RUN_AS
from sovereign_dev import build, images, oci

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                       reason="needs Debian's containerd (make setup installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd runs containers as root"),
]


class Containerd:
    """A containerd of its own: started on a private socket, stopped and removed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = str(root / "containerd.sock")
        self.runc = str(build.ensure("runc", progress=False) / "runc")
        (root / "config.toml").write_text(
            "version = 2\n"
            f'root = "{root}/root"\nstate = "{root}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
        )
        self.log = open(root / "containerd.log", "w")
        self.process = subprocess.Popen(["containerd", "--config", str(root / "config.toml")],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "-a", self.socket, "version"], capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(root / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def run(self, image: str, name: str, *args: str, env: dict[str, str] | None = None,
            mounts: tuple[str, ...] = (), net_host: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """``ctr run --rm --read-only`` of ``image`` as its own user: output and exit code."""
        command = ["ctr", "-a", self.socket, "-n", "k8s.io", "run", "--rm", "--read-only", "--runc-binary", self.runc]
        command += [f"--env={key}={value}" for key, value in (env or {}).items()]
        command += [f"--mount={mount}" for mount in mounts] + (["--net-host"] if net_host else [])
        return subprocess.run([*command, image, name, *args], capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    # A short path: the socket's must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ctrd-"))
    daemon = Containerd(root)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def imported(containerd: Containerd) -> dict[str, str]:
    return images.import_images(address=containerd.socket, names=["pause", "operator", "chat-client"],
                                progress=False)


def test_the_images_import_under_the_references_pods_name(containerd, imported):
    assert imported == {"pause": images.PAUSE_IMAGE, "operator": images.OPERATOR_IMAGE,
                        "chat-client": images.CHAT_CLIENT_IMAGE}
    listed = subprocess.run(["ctr", "-a", containerd.socket, "-n", "k8s.io", "images", "ls", "-q"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert set(imported.values()) <= set(listed)
    result = containerd.run(images.PAUSE_IMAGE, "pause-version", "/pause", "--version")
    assert (result.returncode, result.stdout) == (0, f"sovereign-pause {images.PAUSE_VERSION}\n"), result.stderr


def test_the_operator_image_runs_read_only_as_its_non_root_user(containerd, imported):
    result = containerd.run(images.OPERATOR_IMAGE, "operator-version", "sovereign", "--version")
    assert (result.returncode, result.stdout.strip()) == (0, "sovereign, version 0.1.0"), result.stderr
    result = containerd.run(images.OPERATOR_IMAGE, "operator-id", "python", "-c",
                            "import os, sovereign; print(os.getuid(), os.getgid(), sovereign.__file__)")
    assert result.stdout.split() == ["65532", "65532",
                                     "/opt/sovereign/lib/python3.11/site-packages/sovereign/__init__.py"], result.stderr


def test_the_operator_image_loads_a_model_from_minio_as_the_loader_init_container(
        containerd, imported, minio_servers, minio_bucket_name, tmp_path):
    me = minio_servers["me-central-1"]
    files = {"config.json": b'{"hidden_size": 64}', "tokenizer/tokenizer.json": b'{"vocab": {}}',
             "model.safetensors": os.urandom(3 * 1024 * 1024 + 17)}
    client = me.client()
    client.create_bucket(Bucket=minio_bucket_name)
    for relative, body in files.items():
        client.upload_fileobj(io.BytesIO(body), minio_bucket_name, f"models/tiny/{relative}")
    volume = tmp_path / "weights"
    volume.mkdir()
    os.chown(volume, RUN_AS, RUN_AS)  # the pod's fsGroup makes the volume the loader's
    # The loader's environment as rendered (render.inference), the Secret's keys resolved.
    env = {"SOVEREIGN_S3_ENDPOINT": me.endpoint, "SOVEREIGN_S3_REGION": me.region,
           "SOVEREIGN_MODEL_BUCKET": minio_bucket_name, "SOVEREIGN_MODEL_PATH": "models/tiny/",
           "SOVEREIGN_MODEL_DIR": "/models/chat", "SOVEREIGN_ALLOWED_REGIONS": "me-central-1",
           "SOVEREIGN_S3_PATH_STYLE": "true", "AWS_ACCESS_KEY_ID": me.access_key,
           "AWS_SECRET_ACCESS_KEY": me.secret_key}
    result = containerd.run(images.OPERATOR_IMAGE, "fetch-model", "sovereign", "fetch-model", "--progress=plain",
                            env=env, net_host=True,
                            mounts=(f"type=bind,src={volume},dst=/models/chat,options=rbind:rw",))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"fetching s3://{minio_bucket_name}/models/tiny/: 3 files" in result.stdout + result.stderr
    for relative, body in files.items():
        assert (volume / relative).read_bytes() == body, relative


class Model(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint on the host, answering ``echo: <question>``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ModelHandler)


class ModelHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = {"model": "tiny.gguf", "choices": [{"message": {"content": "echo: " + body["messages"][0]["content"]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_the_chat_client_image_asks_its_model_and_logs_the_answer(containerd, imported):
    model = Model()
    threading.Thread(target=model.serve_forever, daemon=True).start()
    try:
        env = {"SOVEREIGN_MODEL_CHAT_URL": f"http://127.0.0.1:{model.server_port}/v1",
               "SOVEREIGN_MODEL_CHAT_NAME": "chat", "ASK_EVERY_SECONDS": "0.5", "ASK_QUESTION": "ping",
               "PORT": "0"}
        # `timeout` ends the client after its first answers: a long-running app, cut short.
        result = containerd.run(images.CHAT_CLIENT_IMAGE, "chat-client", "timeout", "-s", "TERM", "3",
                                "python3", f"{images.CHAT_CLIENT_DIR}/chat_client.py", env=env, net_host=True)
    finally:
        model.shutdown()
    assert 'answer model=chat served_by=tiny.gguf' in result.stdout, result.stdout + result.stderr
    assert 'text="echo: ping"' in result.stdout
