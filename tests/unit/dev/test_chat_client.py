"""The sample application asks its model by the logical name the operator gives it, and shows the answer.

The client runs as its own process, as in its container, configured only by the environment
``sovereign.render.application`` renders; the model is a small OpenAI-compatible server in the
test that records what it was asked (the real engine runs in the e2e tests on the real node).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from sovereign.api import parse_stack
from sovereign.render.application import application_env
from sovereign_dev.apps import chat_client
from sovereign_dev.chart import REPO_ROOT

CLIENT = chat_client.__file__


class Engine(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint answering ``echo: <question>`` as ``served``."""

    def __init__(self, *, served: str) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.served = served
        super().__init__(("127.0.0.1", 0), EngineHandler)


class EngineHandler(BaseHTTPRequestHandler):
    server: Engine

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        reply = json.dumps({"model": self.server.served, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "echo: " + body["messages"][-1]["content"]}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def engine() -> Iterator[Engine]:
    server = Engine(served="/models/qwen-tiny")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rendered_env(*, models: list[str]) -> dict[str, str]:
    """The environment the operator renders for the full sample's application, given ``models``."""
    document = yaml.safe_load((REPO_ROOT / "manifests" / "samples" / "full.yaml").read_text())
    document["metadata"]["namespace"] = "gov"
    app = document["spec"]["applications"][0]
    app["models"], app["dataStores"], app["env"] = models, [], []
    stack = parse_stack(document)
    return {item["name"]: item["value"] for item in application_env(stack=stack, app=stack.spec.applications[0])}


def start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CLIENT], env={"PATH": "/usr/bin:/bin", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def get(url: str) -> tuple[int, dict]:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_it_asks_the_model_by_its_logical_name_and_serves_and_logs_the_answer(engine):
    env = rendered_env(models=["chat"])
    assert env["SOVEREIGN_MODEL_CHAT_URL"] == "http://chat.gov.svc:8000/v1"
    # The rendered URL names the Service; here the model answers on loopback instead.
    env["SOVEREIGN_MODEL_CHAT_URL"] = f"http://127.0.0.1:{engine.server_port}/v1"
    port = free_port()
    client = start({**env, "PORT": str(port)})
    try:
        status, body = get(f"http://127.0.0.1:{port}/ask?q=what+is+sovereignty")
        assert (status, body["model"], body["servedBy"], body["answer"]) == (
            200, "chat", "/models/qwen-tiny", "echo: what is sovereignty")
        ((path, request),) = engine.requests
        assert path == "/v1/chat/completions" and request["model"] == "chat"
        assert request["messages"] == [{"role": "user", "content": "what is sovereignty"}]
    finally:
        client.terminate()
        output = client.communicate(timeout=10)[0]
    assert client.returncode == 0, "SIGTERM must stop it cleanly (it is PID 1 in its container)"
    assert 'answer model=chat served_by=/models/qwen-tiny' in output
    assert 'text="echo: what is sovereignty"' in output


def test_it_asks_by_itself_when_given_a_period_so_its_log_shows_completions(engine):
    env = {"SOVEREIGN_MODEL_CHAT_URL": f"http://127.0.0.1:{engine.server_port}/v1", "SOVEREIGN_MODEL_CHAT_NAME": "chat",
           "PORT": str(free_port()), "ASK_EVERY_SECONDS": "0.2", "ASK_QUESTION": "ping"}
    client = start(env)
    try:
        lines = [client.stdout.readline() for _ in range(3)]
    finally:
        client.kill()
        client.wait()
    assert lines[1].startswith("answer model=chat ") and lines[2].endswith('text="echo: ping"\n'), lines


def test_a_model_that_does_not_answer_gives_502_naming_the_endpoint():
    port, dead = free_port(), free_port()
    client = start({"SOVEREIGN_MODEL_CHAT_URL": f"http://127.0.0.1:{dead}/v1", "SOVEREIGN_MODEL_CHAT_NAME": "chat",
                    "PORT": str(port)})
    try:
        status, body = get(f"http://127.0.0.1:{port}/ask?q=hi")
    finally:
        client.kill()
        client.wait()
    assert status == 502 and body["endpoint"] == f"http://127.0.0.1:{dead}/v1" and "refused" in body["error"].lower()


def test_with_two_models_it_needs_chat_model_and_says_so():
    env = rendered_env(models=["chat", "embed"])
    with pytest.raises(chat_client.ConfigError, match="set CHAT_MODEL to the one to call"):
        chat_client.model_from_env(env)
    assert chat_client.model_from_env({**env, "CHAT_MODEL": "embed"}) == chat_client.Model(
        name="embed", url="http://embed.gov.svc:8000/v1")
    with pytest.raises(chat_client.ConfigError, match="CHAT_MODEL=other .* list the model in the application's"):
        chat_client.model_from_env({**env, "CHAT_MODEL": "other"})
    result = subprocess.run([sys.executable, CLIENT], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 2 and "list exactly one model in the application's `models`" in result.stderr
