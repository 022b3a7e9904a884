"""The llama-server command line and environment the operator renders run on the pinned build.

The container ``render`` makes for the cpu sample (its model pointed at a generated tiny GGUF
file) is started as a host process with the cached llama-server binary: only the model path,
host and port are swapped for local ones, every other flag and variable is the rendered one. It
becomes healthy on ``/health`` (the probes' path), answers OpenAI chat completions under the
logical name and the model's name (``--alias``), exports ``llamacpp:`` metrics (``--metrics``),
and, with the rendered environment, does not even ask for a model URL (``LLAMA_ARG_OFFLINE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sovereign.api import load_documents, parse_stack
from sovereign.render.facts import ClusterFacts
from sovereign.render.inference import render_model
from sovereign_dev import build, tinymodel
from sovereign_dev.cluster import REPO_ROOT
from sovereign_dev.engine import LlamaServer, model_key

pytestmark = pytest.mark.engine
MODEL = "tiny-llama-a"


def _rendered_container() -> dict[str, Any]:
    (document,) = load_documents((REPO_ROOT / "manifests" / "samples" / "cpu.yaml").read_text())
    document["metadata"]["namespace"] = "gov-qa"
    model = document["spec"]["models"][0]
    model |= {"model": MODEL, "source": {"dataStore": "weights", "path": model_key(MODEL)},
              "resources": {"cpu": "2", "memory": "1Gi"}, "extraArgs": ["--ctx-size", "2048"]}
    stack = parse_stack(document)
    deployment = render_model(stack=stack, model=stack.spec.models[0], facts=ClusterFacts())[0]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


class RenderedServer(LlamaServer):
    """A ``LlamaServer`` whose command line is the rendered container's, on a local port."""

    def __init__(self, *, container: dict[str, Any], model: Path, root: Path) -> None:
        super().__init__(model=model, alias="chat", root=root)
        self.container = container

    def command(self, binary: Path) -> list[str]:
        args = list(self.container["args"])
        for flag, local in (("--model", str(self.model)), ("--host", "127.0.0.1"), ("--port", "0")):
            args[args.index(flag) + 1] = local
        return [str(binary), *args]


@pytest.fixture(scope="module")
def container() -> dict[str, Any]:
    return _rendered_container()


@pytest.fixture(scope="module")
def rendered_env(container: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The process environment with the container's variables, and llama.cpp's cache in a temporary place."""
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    env["LLAMA_CACHE"] = str(tmp_path_factory.mktemp("llama-cache"))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def server(container, rendered_env, tmp_path_factory) -> Iterator[RenderedServer]:
    with RenderedServer(container=container, model=tinymodel.ensure(MODEL),
                        root=tmp_path_factory.mktemp("rendered")) as running:
        yield running


def test_the_rendered_server_is_healthy_on_the_probes_path(server, container) -> None:
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert json.loads(server.get("/health")) == {"status": "ok"}


@pytest.mark.parametrize("name", ["chat", MODEL])
def test_it_answers_under_the_logical_name_and_the_model_name(server, name) -> None:
    answer = server.chat(content="Where are you served?", max_tokens=8, model=name, seed=3)

    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()


def test_it_lists_both_names_and_exports_its_metrics(server) -> None:
    listed = json.loads(server.get("/v1/models"))
    names = {entry["id"] for entry in listed["data"]} | {alias for entry in listed["data"]
                                                         for alias in entry.get("aliases", [])}
    server.chat(content="count me", max_tokens=4, model="chat")

    assert {"chat", MODEL} <= names, listed
    assert "llamacpp:prompt_tokens_total" in server.get("/metrics")


class _Models(BaseHTTPRequestHandler):
    """A model server with nothing on it, counting who asks."""

    asked: list[str] = []

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.asked.append(self.path)
        self.send_error(404)

    do_GET = do_HEAD

    def log_message(self, *args: Any) -> None:
        pass


def _ask_for_a_model_url(container: dict[str, Any], env: dict[str, str], directory: Path) -> list[str]:
    """Run the rendered command with a model URL on a local server; what that server was asked."""
    models = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    _Models.asked = []
    threading.Thread(target=models.serve_forever, daemon=True).start()
    args = list(container["args"])
    args[args.index("--model") + 1] = str(directory / "absent.gguf")
    args[args.index("--port") + 1] = "0"
    args += ["--model-url", f"http://127.0.0.1:{models.server_address[1]}/tiny.gguf"]
    try:
        result = subprocess.run([str(build.ensure("llama-server") / "llama-server"), *args], capture_output=True,
                                text=True, timeout=60, env=env, cwd=directory)
    finally:
        models.shutdown()
        models.server_close()
    assert result.returncode != 0, "no model was there to serve"
    return list(_Models.asked)


def test_the_rendered_environment_keeps_it_from_downloading(container, rendered_env, tmp_path) -> None:
    """Asked for a model URL (which validation refuses in a spec), the server with the rendered
    environment does not even ask; without LLAMA_ARG_OFFLINE it would."""
    offline = {**os.environ, **rendered_env}
    online = {key: value for key, value in offline.items() if key != "LLAMA_ARG_OFFLINE"}

    assert _ask_for_a_model_url(container, offline, tmp_path) == []
    assert _ask_for_a_model_url(container, online, tmp_path) == ["/tiny.gguf"]
