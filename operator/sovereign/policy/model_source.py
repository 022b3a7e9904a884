"""Is there a model where a model's ``source.path`` points? Pure decisions on what the store holds.

A vLLM model streamed from its bucket (``loadFormat: RunaiStreamer``) needs safetensors under
``source.path``, the only format the Run:ai streamer reads: ``check_safetensors`` decides from
the keys listed there. A llama-cpp model's ``source.path`` names one GGUF file. Only the bucket can say whether it is
there and is GGUF (every GGUF file begins with the four bytes ``GGUF``), so the reconciler's store
verification reads the key (``services.store_check.probe_object``) and asks ``check_gguf``. A
failing decision holds the model back (no replica starts, so nothing is copied or served) and
lands verbatim in ``ModelsReady``: its message names the field, what the bucket holds and the fix.
Called by ``services.residency_stores``.
"""

from __future__ import annotations

from sovereign.policy.residency_store import Decision
from sovereign.stores.readings import ObjectProbe

GGUF_MAGIC = b"GGUF"
GGUF_SUFFIX = ".gguf"

# Reasons.
MODEL_FILE_PRESENT = "ModelFilePresent"
MODEL_FILE_MISSING = "ModelFileMissing"
MODEL_FILE_NOT_GGUF = "ModelFileNotGGUF"
MODEL_NOT_SAFETENSORS = "ModelNotSafetensors"
SAFETENSORS_SUFFIX = ".safetensors"

#: How many files a message lists.
_LISTED = 10


def check_gguf(*, probe: ObjectProbe, field: str) -> Decision:
    """Whether ``probe`` found a GGUF file; ``field`` is the spec path to name (``spec.models[2].source.path``)."""
    where = f"s3://{probe.bucket}/{probe.key}"
    if not probe.exists:
        directory = probe.key.rpartition("/")[0]
        folder = f"s3://{probe.bucket}/{directory + '/' if directory else ''}"
        beside = (f"GGUF files in {folder}: {', '.join(probe.alike[:_LISTED])}" if probe.alike
                  else f"{folder} holds no GGUF file")
        return Decision(False, MODEL_FILE_MISSING,
                        f"{field}: {where} does not exist ({beside}): upload the model's GGUF file "
                        f"there, or set {field} to the key of one")
    if probe.size == 0:
        return Decision(False, MODEL_FILE_NOT_GGUF,
                        f"{field}: {where} is empty: upload the model's GGUF file over it")
    if not probe.start.startswith(GGUF_MAGIC):
        return Decision(False, MODEL_FILE_NOT_GGUF,
                        f"{field}: {where} is not a GGUF file (it starts with {probe.start[:4]!r}, a GGUF "
                        f"file with {GGUF_MAGIC!r}): convert the model to GGUF (llama.cpp's "
                        "convert_hf_to_gguf.py) and upload that, or use engine vllm for other formats")
    return Decision(True, MODEL_FILE_PRESENT, f"{where} is a GGUF file of {probe.size} bytes")


def check_safetensors(*, bucket: str, prefix: str, keys: list[str], field: str) -> Decision:
    """Whether the keys under ``prefix`` hold a model the Run:ai streamer can read (safetensors);
    ``field`` is the spec path to name."""
    where = f"s3://{bucket}/{prefix}"
    tensors = [key for key in keys if key.endswith(SAFETENSORS_SUFFIX)]
    if tensors:
        return Decision(True, MODEL_FILE_PRESENT, f"{where} holds {len(tensors)} safetensors file(s)")
    found = (f"it holds {', '.join(keys[:_LISTED])}{' ...' if len(keys) > _LISTED else ''}" if keys
             else "nothing is there")
    return Decision(False, MODEL_NOT_SAFETENSORS,
                    f"{field}: loadFormat RunaiStreamer streams safetensors, and {where} holds none ({found}): "
                    f"upload the model in safetensors there, set {field} to where it is, or set loadFormat: Copy")
