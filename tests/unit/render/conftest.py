"""Shared inputs of the render tests: the samples as the operator sees them, the facts of
``facts.yaml``, and the golden-manifest comparison.

Goldens live in ``golden/*.yaml``. After an intended change of output, regenerate them with
``SOVEREIGN_UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/unit/render`` and review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from render_inputs import HERE, sample_document, stack_from  # next to this file

from sovereign.api import SovereignStack, load_documents
from sovereign.cli.render import dump_manifests
from sovereign.render.facts import ClusterFacts
from sovereign.services.facts import facts_from_nodes

GOLDEN = HERE / "golden"
UPDATE_ENV = "SOVEREIGN_UPDATE_GOLDENS"


@pytest.fixture
def full_document() -> dict[str, Any]:
    return sample_document("full")


@pytest.fixture
def full_stack(full_document: dict[str, Any]) -> SovereignStack:
    return stack_from(full_document)


@pytest.fixture
def minimal_stack() -> SovereignStack:
    return stack_from(sample_document("minimal"))


@pytest.fixture
def cpu_stack() -> SovereignStack:
    return stack_from(sample_document("cpu"))


@pytest.fixture
def facts() -> ClusterFacts:
    (listing,) = load_documents((HERE / "facts.yaml").read_text())
    return facts_from_nodes(listing["items"], operator_image="registry.gov.qa/sovereign-operator:0.1.0")


@pytest.fixture
def assert_golden() -> Callable[[str, list[dict[str, Any]]], None]:
    """Compare manifests with ``golden/<name>.yaml`` (or rewrite it when regenerating)."""

    def check(name: str, objects: list[dict[str, Any]]) -> None:
        path = GOLDEN / f"{name}.yaml"
        text = dump_manifests(objects)
        if os.environ.get(UPDATE_ENV):
            path.write_text(text)
        assert path.exists(), f"{path} is missing; create it with {UPDATE_ENV}=1"
        assert text == path.read_text(), f"output differs from {path}; if intended, regenerate with {UPDATE_ENV}=1"

    return check
