"""The generated tiny models: reproducible, distinct, and shaped as llama.cpp's loader reads them.

That llama-server really loads them and answers is tested in tests/integration/test_engine.py.
"""

from __future__ import annotations

import gguf
import pytest

from sovereign_dev import tinymodel


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"{key} missing"
    return field.contents()


def test_the_same_model_always_gives_the_same_bytes_and_the_two_models_differ(tmp_path):
    first, again, other = tmp_path / "a1.gguf", tmp_path / "a2.gguf", tmp_path / "b.gguf"
    tinymodel.write_gguf(model=tinymodel.MODELS["tiny-llama-a"], path=first)
    tinymodel.write_gguf(model=tinymodel.MODELS["tiny-llama-a"], path=again)
    tinymodel.write_gguf(model=tinymodel.MODELS["tiny-llama-b"], path=other)

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert first.stat().st_size < 1 << 20


def test_the_file_carries_the_llama_hyper_parameters_tokenizer_and_chat_template(tmp_path):
    spec = tinymodel.MODELS["tiny-llama-b"]
    path = tmp_path / spec.file_name
    tinymodel.write_gguf(model=spec, path=path)
    reader = gguf.GGUFReader(path)

    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.name") == "tiny-llama-b"
    # The keys llama.cpp's llama loader requires (src/llama-model.cpp, models/llama.cpp).
    assert _field(reader, "llama.context_length") == spec.context_length
    assert _field(reader, "llama.embedding_length") == spec.n_embd
    assert _field(reader, "llama.block_count") == spec.n_layer
    assert _field(reader, "llama.attention.head_count_kv") == spec.n_head_kv
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert "<|im_start|>" in _field(reader, "tokenizer.chat_template")

    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens[tinymodel.EOS_ID] == "<|im_end|>"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tinymodel.EOS_ID
    tensors = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    # GGUF's dimension order: {n_embd, n_vocab} for the embeddings, as llama.cpp creates them.
    assert tensors["token_embd.weight"] == (spec.n_embd, len(tokens))
    assert tensors[f"blk.{spec.n_layer - 1}.ffn_down.weight"] == (spec.n_ff, spec.n_embd)


def test_every_token_decodes_to_whole_utf8_text():
    # Random weights pick any token; each must decode on its own, or an answer could be cut mid-character.
    tokens, merges = tinymodel._vocabulary()
    spelling = {text: byte for byte, text in tinymodel._byte_spelling().items()}
    words = [t for t in tokens if t not in tinymodel.SPECIAL_TOKENS]

    decoded = [bytes(spelling[ch] for ch in token).decode("utf-8") for token in words]

    assert " sovereign" in decoded and "\n" in decoded
    assert len(set(tokens)) == len(tokens)
    assert all(f"{left}{right}" in tokens for left, right in (m.split(" ") for m in merges))


def test_ensure_caches_the_file_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVEREIGN_CACHE_DIR", str(tmp_path))
    path = tinymodel.ensure("tiny-llama-a")
    assert path.parent.parent == tmp_path / "models"
    assert path.name == "tiny-llama-a.gguf"
    written = path.stat().st_mtime_ns
    assert tinymodel.ensure("tiny-llama-a").stat().st_mtime_ns == written


def test_an_unknown_model_name_lists_the_known_ones():
    with pytest.raises(tinymodel.TinyModelError, match=r"no tiny model named 'tiny-llama-z'.*tiny-llama-a"):
        tinymodel.ensure("tiny-llama-z")


def test_the_benchmark_model_is_known_by_name_but_never_generated_by_default():
    """`make models` (all of MODELS) stays small; the 1 GiB model is made when a benchmark names it."""
    sized = tinymodel.model("bench-llama-1g")
    assert sized.name not in tinymodel.MODELS and sized.file_name == "bench-llama-1g.gguf"
    with pytest.raises(tinymodel.TinyModelError, match="bench-llama-1g"):
        tinymodel.model("no-such-model")
