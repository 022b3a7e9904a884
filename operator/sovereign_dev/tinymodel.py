"""The project's own tiny chat models: llama-architecture GGUF files with random weights.

Nothing is fetched from a model hub: each model is generated from a seed with the ``gguf``
package, small enough (about half a megabyte) that llama-server loads it in milliseconds; the
``SIZED_MODELS`` are the same kind of model made large (about 1 GiB) for the benchmarks. The
file carries everything llama.cpp's loader needs (the llama hyper-parameters, a byte-level BPE
tokenizer in the ``gpt2`` format and a ChatML chat template), so ``/v1/chat/completions`` answers
with real, if meaningless, text. Two models with different seeds and names stand in for
"swap ``model:`` to another model" in the end-to-end test.

The vocabulary is printable ASCII, newline, tab and a few dozen words built by BPE merges; no
token decodes to a partial UTF-8 sequence, so whatever the random weights pick is valid text.

``ensure(name)`` returns the cached file (``<cache>/models/<name>-<key>/<name>.gguf``, keyed by
this generator's source and the ``gguf`` version), writing it first when absent. Called by the
engine fixtures, ``sovereign_dev.engine.seed_models`` and ``python -m sovereign_dev.tinymodel``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import gguf
import numpy as np

from sovereign_dev.build import cache_root

# The control tokens of ChatML; <|im_end|> ends a turn, so it is both EOS and EOT.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_ID, EOS_ID = 0, 2

# Whole words in the vocabulary (each with its leading space), so random text reads like words.
WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "it", "on", "for", "with", "as", "this", "that",
    "model", "data", "region", "node", "cluster", "token", "answer", "store", "bucket", "stack",
    "sovereign", "local", "country", "weights", "engine", "serve", "request", "reply", "hello",
    "world", "tiny", "llama", "random", "chat", "text", "policy", "secure", "cloud", "running",
)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyModel:
    """The shape and seed of one generated model; the name is also the file and prefix name."""

    name: str
    seed: int
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 160
    context_length: int = 2048

    @property
    def file_name(self) -> str:
        return f"{self.name}.gguf"


MODELS: dict[str, TinyModel] = {
    m.name: m for m in (TinyModel("tiny-llama-a", seed=1), TinyModel("tiny-llama-b", seed=2))
}
#: Models of the same kind, sized for the first-token benchmark (``bench/first_token.py``): with a
#: tiny model Kubernetes' fixed costs are all there is to see, with about a GiB of weights the
#: copy and the load weigh too. Generated only when named, never by default (``make models``).
SIZED_MODELS: dict[str, TinyModel] = {
    m.name: m for m in (
        # 6 layers of 44M f32 parameters: 1.0 GiB.
        TinyModel("bench-llama-1g", seed=3, n_embd=2048, n_layer=6, n_head=16, n_head_kv=4, n_ff=5504),
    )
}


class TinyModelError(ValueError):
    """An unknown model name; the message lists the known ones."""


def model(name: str) -> TinyModel:
    known = {**MODELS, **SIZED_MODELS}
    if name not in known:
        raise TinyModelError(f"no tiny model named {name!r}: choose one of {sorted(known)}")
    return known[name]


def ensure(name: str) -> Path:
    """The cached GGUF file of model ``name``, generated once per generator version."""
    spec = model(name)
    path = _cache_dir() / f"{spec.name}-{_generator_key()}" / spec.file_name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a reader never sees half a file.
    handle, staging = tempfile.mkstemp(prefix=f".{spec.file_name}.", dir=path.parent)
    os.close(handle)
    try:
        write_gguf(model=spec, path=Path(staging))
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    return path


def write_gguf(*, model: TinyModel, path: Path) -> None:
    """Write ``model`` as a GGUF file at ``path``; the same model always gives the same bytes."""
    tokens, merges = _vocabulary()
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name(model.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(model.context_length)
    writer.add_embedding_length(model.n_embd)
    writer.add_block_count(model.n_layer)
    writer.add_feed_forward_length(model.n_ff)
    writer.add_head_count(model.n_head)
    writer.add_head_count_kv(model.n_head_kv)
    writer.add_rope_dimension_count(model.n_embd // model.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
                           + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIAL_TOKENS)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_eot_token_id(EOS_ID)
    writer.add_pad_token_id(BOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, tensor in _weights(model=model, n_vocab=len(tokens)):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _vocabulary() -> tuple[list[str], list[str]]:
    """Tokens and BPE merges, in the byte-to-unicode spelling GPT-2 tokenizers store."""
    spell = _byte_spelling()
    characters = [spell[b] for b in (9, 10, *range(32, 127))]
    tokens = [*SPECIAL_TOKENS, *characters]
    merges: list[str] = []
    known = set(tokens)
    for word in WORDS:
        # Merge left to right: "Ġ t" -> "Ġt", "Ġt h" -> "Ġth", ... up to the whole word.
        pieces = [spell[32], *word]
        prefix = pieces[0]
        for piece in pieces[1:]:
            merged = prefix + piece
            if merged not in known:
                merges.append(f"{prefix} {piece}")
                tokens.append(merged)
                known.add(merged)
            prefix = merged
    return tokens, merges


def _byte_spelling() -> dict[int, str]:
    # GPT-2's byte-level BPE stores bytes that are not printable as the code points above 255, in
    # byte order; llama.cpp's tokenizer maps them back.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shifted)
            shifted += 1
    return spelling


def _weights(*, model: TinyModel, n_vocab: int) -> list[tuple[str, np.ndarray]]:
    """Random tensors named and shaped as llama.cpp's llama architecture loads them.

    numpy shapes are (rows, columns), the reverse of GGUF's dimension order: a matrix llama.cpp
    declares as {n_embd, n_vocab} is a (n_vocab, n_embd) array here.
    """
    rng = np.random.default_rng(model.seed)
    head_dim = model.n_embd // model.n_head
    n_kv = model.n_head_kv * head_dim

    def matrix(rows: int, columns: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, size=(rows, columns)).astype(np.float32)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    tensors = [("token_embd.weight", matrix(n_vocab, model.n_embd))]
    for layer in range(model.n_layer):
        block = f"blk.{layer}"
        tensors += [
            (f"{block}.attn_norm.weight", ones(model.n_embd)),
            (f"{block}.attn_q.weight", matrix(model.n_embd, model.n_embd)),
            (f"{block}.attn_k.weight", matrix(n_kv, model.n_embd)),
            (f"{block}.attn_v.weight", matrix(n_kv, model.n_embd)),
            (f"{block}.attn_output.weight", matrix(model.n_embd, model.n_embd)),
            (f"{block}.ffn_norm.weight", ones(model.n_embd)),
            (f"{block}.ffn_gate.weight", matrix(model.n_ff, model.n_embd)),
            (f"{block}.ffn_up.weight", matrix(model.n_ff, model.n_embd)),
            (f"{block}.ffn_down.weight", matrix(model.n_embd, model.n_ff)),
        ]
    tensors += [("output_norm.weight", ones(model.n_embd)),
                ("output.weight", matrix(n_vocab, model.n_embd))]
    return tensors


def _generator_key() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(metadata.version("gguf").encode())
    return digest.hexdigest()[:10]


def _cache_dir() -> Path:
    return cache_root() / "models"


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(MODELS)
    try:
        specs = [model(n) for n in names]
    except TinyModelError as err:
        print(str(err), file=sys.stderr)
        return 2
    for spec in specs:
        started = time.monotonic()
        path = ensure(spec.name)
        print(f"{spec.name}: {path} ({path.stat().st_size} bytes, {time.monotonic() - started:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
