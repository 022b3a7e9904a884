"""The models table of ``sovereign status`` (and the view of ``dev up``) shows each model's cache."""

from __future__ import annotations

from rich.console import Console

from sovereign.cli._view import stack_panel
from sovereign.services.overview import StackView


def _shown(models: tuple[dict, ...]) -> str:
    stack = StackView(namespace="gov-qa", name="citizen-services", jurisdiction="QA", regions=("me-central-1",),
                      enforcement="Enforce", generation=1, observed_generation=1, conditions=(), models=models,
                      node_pools=(), data_stores=(), violations=())
    console = Console(record=True, width=200)
    console.print(stack_panel(stack))
    return console.export_text()


def test_a_filled_shared_cache_shows_its_files_and_size_and_a_filling_one_says_so() -> None:
    text = _shown((
        {"name": "chat", "model": "Qwen/Qwen2.5-72B", "replicas": 2, "readyReplicas": 2, "cache": {
            "layout": "SharedVolume", "state": "Filled", "files": 37, "bytes": 145 * 2**30}},
        {"name": "embed", "model": "bge-m3", "replicas": 0, "cache": {"layout": "SharedVolume", "state": "Filling"}},
        {"name": "tiny", "model": "tiny", "replicas": 1, "readyReplicas": 1, "cache": {"layout": "PerReplica"}},
    ))
    cells = [line.replace("│", " ").split() for line in text.splitlines()]
    rows = {words[0]: " ".join(words) for words in cells if words and words[0] in {"chat", "embed", "tiny"}}

    assert "SharedVolume Filled: 37 file(s), 145.0 GiB" in rows["chat"]
    assert "SharedVolume Filling" in rows["embed"]
    assert "PerReplica" in rows["tiny"]
