"""The llama.cpp build this operator release pins for the CPU engine, and its default image.

One place for the version: the API's defaults and ``render`` read ``LLAMA_CPP_IMAGE`` from here
for a model whose ``engine`` is llama.cpp, and the local harness (``sovereign_dev.build`` builds
``llama-server`` at ``LLAMA_CPP_BUILD``; ``sovereign_dev.engine`` tags its locally built image with
exactly ``LLAMA_CPP_IMAGE``) so the rendered default runs on the local node without a registry.
"""

from __future__ import annotations

# llama.cpp numbers its releases by the commit count of master: b11312 is this commit. The
# upstream server image for it is published as ghcr.io/ggml-org/llama.cpp:server-b11312.
LLAMA_CPP_BUILD = 11312
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
LLAMA_CPP_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMA_CPP_BUILD}"
