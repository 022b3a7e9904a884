"""The CPU engine's image built here is the one the operator renders, and serves from its own root.

``sovereign_dev.images`` writes llama-server onto the Debian base under the reference the operator
renders by default for engine llama-cpp, laid out as upstream's server image. This test reads the
archive, then runs the server from the image's unpacked root filesystem (chroot, as the user the
rendered pod runs as) on a generated tiny model and asks it for a chat completion, so the image's
C library and layout are proved, not assumed. The archive comes from the cache ``make setup``
fills (built on first use otherwise: needs root for the base).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovereign.api.engines import LLAMA_CPP_BUILD, LLAMA_CPP_IMAGE
from sovereign.render.inference import LLAMA_SERVER
from sovereign.render.loader import RUN_AS
from sovereign_dev import images, oci, tinymodel
from sovereign_dev.engine import LlamaServer

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(os.geteuid() != 0, reason="the base image and chroot need root"),
]


@pytest.fixture(scope="module")
def archive() -> Path:
    return images.ensure("llama-server", progress=False)


@pytest.fixture(scope="module")
def rootfs(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llama-server-rootfs")
    root.chmod(0o755)  # as the root of a container is; pytest makes its directories private
    oci.extract_rootfs(archive, root)
    return root


@pytest.fixture
def served(rootfs: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    # The weights volume of a pod, here a directory of the root filesystem the server's user reads.
    models = rootfs / "models"
    models.mkdir(exist_ok=True)
    shutil.copyfile(tinymodel.ensure("tiny-llama-b"), models / "tiny-llama-b.gguf")
    prefix = ("chroot", f"--userspec={RUN_AS}:{RUN_AS}", str(rootfs))
    with LlamaServer(model=Path("/models/tiny-llama-b.gguf"), alias="tiny-llama-b", root=tmp_path,
                     binary=Path(LLAMA_SERVER), prefix=prefix) as server:
        yield server


def test_it_imports_as_the_image_the_operator_renders_for_llama_cpp(archive: Path):
    image = oci.read_image(archive)
    base = oci.read_image(images.ensure("base", progress=False))
    config = image.config["config"]

    assert image.reference == LLAMA_CPP_IMAGE == f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMA_CPP_BUILD}"
    assert config["Entrypoint"] == [LLAMA_SERVER]
    assert "LLAMA_ARG_HOST=0.0.0.0" in config["Env"]
    assert config["Labels"]["org.opencontainers.image.version"] == f"b{LLAMA_CPP_BUILD}"
    # One layer on the base's, shared with the other images (containerd stores them once).
    assert image.layers[:-1] == base.layers and len(image.layers) == len(base.layers) + 1


def test_the_server_in_the_image_reports_the_pinned_release(rootfs: Path):
    result = subprocess.run(["chroot", f"--userspec={RUN_AS}:{RUN_AS}", str(rootfs), LLAMA_SERVER, "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"(build {LLAMA_CPP_BUILD}," in result.stdout + result.stderr


def test_the_server_in_the_image_answers_a_chat_completion_as_the_pod_user(served: LlamaServer):
    answer = served.chat(content="Which region serves this model?", max_tokens=8, seed=7)

    assert answer["model"] == "tiny-llama-b"
    assert answer["choices"][0]["message"]["content"].strip()
    assert "llamacpp:tokens_predicted_total" in served.get("/metrics")
