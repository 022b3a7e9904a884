"""The sample stack `sovereign dev up` writes and applies: valid as the API reads it, with the CPU
model on the real node and the application calling it by its logical name only when a real node
runs (without one, nothing could run them and the stack would never be Ready)."""

from __future__ import annotations

from typing import Any

import yaml

from sovereign.api import SovereignStack
from sovereign_dev import engine, images
from sovereign_dev.devenv import CPU_MODEL, CPU_MODEL_SOURCE, sample_stack

VALUES = {"namespace": "sovereign-demo", "region": "me-central-1", "jurisdiction": "QA",
          "endpoint": "http://10.85.0.1:9000", "bucket": "sovereign-models",
          "model_path": "models/qwen2.5-7b-instruct/", "access_key": "key", "secret_key": "secret"}


def _stack(*, real_node: bool) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all(sample_stack(real_node=real_node, **VALUES)) if d]
    assert [d["kind"] for d in documents] == ["Namespace", "Secret", "SovereignStack"]
    stack = documents[-1]
    SovereignStack.model_validate(stack)
    return stack["spec"]


def test_with_a_real_node_the_cpu_model_serves_the_seeded_gguf_to_chat_client() -> None:
    spec = _stack(real_node=True)
    cpu = next(m for m in spec["models"] if m["name"] == CPU_MODEL)
    assert cpu["engine"] == "llama-cpp" and cpu["model"] == CPU_MODEL_SOURCE
    # The key seed_models writes, so the loader finds the file the stack names.
    assert cpu["source"] == {"dataStore": "corpus", "path": engine.model_key(CPU_MODEL_SOURCE)}
    pool = next(p for p in spec["nodePools"] if p["name"] == cpu["nodePool"])
    assert pool["existing"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "real-cpu"}
    client = next(a for a in spec["applications"] if a["name"] == "chat-client")
    assert client["models"] == [CPU_MODEL]
    # Applications land on the real node (the region's only untainted node): every image is one
    # imported there, none needs a registry.
    assert {a["image"] for a in spec["applications"]} == {images.CHAT_CLIENT_IMAGE}
    # The GPU model stays on the simulated H100s.
    gpu = next(m for m in spec["models"] if m["name"] == "chat")
    assert gpu["nodePool"] == "h100" and "engine" not in gpu


def test_without_a_real_node_only_the_simulated_gpu_parts_remain() -> None:
    spec = _stack(real_node=False)
    assert [p["name"] for p in spec["nodePools"]] == ["h100"]
    assert [m["name"] for m in spec["models"]] == ["chat"]
    assert [a["name"] for a in spec["applications"]] == ["assistant"]
