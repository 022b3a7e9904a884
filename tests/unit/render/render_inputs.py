"""Inputs of the render tests, importable by the tests next to this file: the samples as the
apiserver hands them to the operator (namespace, uid and generation set)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sovereign.api import SovereignStack, load_documents, parse_stack

HERE = Path(__file__).parent
SAMPLES = HERE.parents[2] / "manifests" / "samples"
NAMESPACE = "gov-qa"
UID = "5f0c6a4e-0000-4000-8000-000000000001"


def sample_document(name: str) -> dict[str, Any]:
    """A sample as the apiserver hands it to the operator: with namespace, uid and generation."""
    (document,) = load_documents((SAMPLES / f"{name}.yaml").read_text())
    document["metadata"] |= {"namespace": NAMESPACE, "uid": UID, "generation": 1}
    return document


def stack_from(document: dict[str, Any]) -> SovereignStack:
    return parse_stack(copy.deepcopy(document))
