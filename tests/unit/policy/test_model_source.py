"""The decision on what lies at a llama-cpp model's source.path, from readings of the bucket."""

from __future__ import annotations

from sovereign.policy import model_source as ms
from sovereign.stores.readings import ObjectProbe

FIELD = "spec.models[3].source.path"


def test_a_file_starting_with_the_gguf_magic_is_a_model() -> None:
    probe = ObjectProbe(bucket="b", key="m/tiny.gguf", exists=True, size=10, start=b"GGUF\x03\x00")

    assert ms.check_gguf(probe=probe, field=FIELD) == ms.Decision(
        True, ms.MODEL_FILE_PRESENT, "s3://b/m/tiny.gguf is a GGUF file of 10 bytes")


def test_a_missing_file_at_the_bucket_root_lists_at_most_ten_gguf_files() -> None:
    alike = tuple(f"model-{n:02}.gguf" for n in range(12))
    probe = ObjectProbe(bucket="b", key="tiny.gguf", exists=False, alike=alike)

    decision = ms.check_gguf(probe=probe, field=FIELD)

    assert decision.reason == ms.MODEL_FILE_MISSING
    assert f"GGUF files in s3://b/: {', '.join(alike[:10])})" in decision.message
    assert decision.message.startswith(f"{FIELD}: s3://b/tiny.gguf does not exist")
    assert decision.message.endswith(f"set {FIELD} to the key of one")


def test_safetensors_renamed_to_gguf_is_refused_with_the_conversion_to_do() -> None:
    probe = ObjectProbe(bucket="b", key="m/x.gguf", exists=True, size=100, start=b"\x08\x00\x00\x00{\"__")

    decision = ms.check_gguf(probe=probe, field=FIELD)

    assert (decision.ok, decision.reason) == (False, ms.MODEL_FILE_NOT_GGUF)
    assert "convert_hf_to_gguf.py" in decision.message and decision.message.startswith(FIELD)
