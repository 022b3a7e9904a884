"""llama-server, built from the pinned llama.cpp source, serves the project's generated tiny models.

The real binary runs as a host process (the container on the real node is the end-to-end test's
part): it becomes healthy, answers an OpenAI chat completion under the model's name, counts the
tokens in its Prometheus metrics, serves the second model with a different answer, and refuses a
file that holds no model. The models also go into an in-country MinIO bucket the way the
end-to-end test and ``sovereign dev up`` seed them.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovereign.api.engines import LLAMA_CPP_BUILD, LLAMA_CPP_COMMIT
from sovereign_dev import build, tinymodel
from sovereign_dev.engine import EngineStartError, LlamaServer, model_key, seed_models

pytestmark = pytest.mark.engine

QUESTION = "Which region serves this model?"


@pytest.fixture(scope="module")
def binary_dir() -> Path:
    return build.ensure("llama-server")


@pytest.fixture(scope="module")
def servers(binary_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LlamaServer]]:
    root = tmp_path_factory.mktemp("engine")
    started: dict[str, LlamaServer] = {}
    try:
        for name in tinymodel.MODELS:
            started[name] = LlamaServer(model=tinymodel.ensure(name), alias=name, root=root,
                                        binary=binary_dir / "llama-server")
            started[name].start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _chat(server: LlamaServer) -> dict:
    # A fixed sampling seed: the same model gives the same answer, so the two models can be told apart.
    return server.chat(content=QUESTION, max_tokens=12, seed=7)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^llamacpp:{name} (\S+)$", text, re.M)
    assert match, f"llamacpp:{name} missing from /metrics:\n{text}"
    return float(match.group(1))


def test_the_built_binary_reports_the_pinned_llama_cpp_release(binary_dir: Path):
    result = subprocess.run([binary_dir / "llama-server", "--version"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    assert f"(build {LLAMA_CPP_BUILD}, commit {LLAMA_CPP_COMMIT[:7]})" in result.stdout + result.stderr


def test_a_chat_completion_answers_with_text_under_the_model_name(servers):
    answer = _chat(servers["tiny-llama-a"])

    assert answer["object"] == "chat.completion"
    assert answer["model"] == "tiny-llama-a"
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] > 0
    assert answer["usage"]["prompt_tokens"] > len(QUESTION.split())
    assert _chat(servers["tiny-llama-a"])["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_the_other_model_answers_under_its_own_name_with_other_text(servers):
    first, second = _chat(servers["tiny-llama-a"]), _chat(servers["tiny-llama-b"])

    assert second["model"] == "tiny-llama-b"
    assert second["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]
    listed = servers["tiny-llama-b"].get("/v1/models")
    assert '"id":"tiny-llama-b"' in listed.replace(" ", "")


def test_metrics_count_the_tokens_of_the_requests_served(servers):
    server = servers["tiny-llama-a"]
    before = _metric(server.get("/metrics"), "tokens_predicted_total")
    answer = _chat(server)
    after = server.get("/metrics")

    assert _metric(after, "tokens_predicted_total") - before == answer["usage"]["completion_tokens"]
    assert _metric(after, "prompt_tokens_total") > 0
    assert "# TYPE llamacpp:requests_processing gauge" in after


def test_a_file_that_holds_no_model_is_refused_with_the_server_log(binary_dir: Path, tmp_path: Path):
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"these bytes are not a GGUF model\n" * 64)
    server = LlamaServer(model=bogus, alias="bogus", root=tmp_path, binary=binary_dir / "llama-server")

    with pytest.raises(EngineStartError, match=r"exited with code [1-9]") as raised:
        server.start(timeout=30)
    assert str(bogus) in str(raised.value)
    assert "failed to load model" in str(raised.value)
    assert not server.running


def test_an_unknown_model_name_in_a_request_is_still_served_by_the_loaded_model(servers):
    # A single-model server answers whatever `model` the client names (as vLLM's --served-model-name
    # does not): an application keeps working when the stack swaps the model behind its name.
    answer = servers["tiny-llama-b"].chat(content=QUESTION, max_tokens=4, model="chat")
    assert answer["model"] == "tiny-llama-b"


def test_seeding_puts_each_model_under_its_prefix_once(minio_servers, minio_bucket_name):
    client = minio_servers["me-central-1"].client()
    client.create_bucket(Bucket=minio_bucket_name,
                         CreateBucketConfiguration={"LocationConstraint": "me-central-1"})

    keys = seed_models(client=client, bucket=minio_bucket_name)

    assert keys == {name: f"models/{name}/{name}.gguf" for name in tinymodel.MODELS}
    for name, key in keys.items():
        stored = client.get_object(Bucket=minio_bucket_name, Key=key)["Body"].read()
        assert stored == tinymodel.ensure(name).read_bytes()
    uploaded = {key: client.head_object(Bucket=minio_bucket_name, Key=key)["LastModified"]
                for key in keys.values()}
    seed_models(client=client, bucket=minio_bucket_name, names=["tiny-llama-a"])
    assert client.head_object(Bucket=minio_bucket_name, Key=model_key("tiny-llama-a"))[
        "LastModified"] == uploaded[model_key("tiny-llama-a")]
    digest = hashlib.sha256(tinymodel.ensure("tiny-llama-a").read_bytes()).hexdigest()
    assert client.head_object(Bucket=minio_bucket_name, Key=model_key("tiny-llama-a"))[
        "Metadata"]["sha256"] == digest

