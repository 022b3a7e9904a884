"""``sovereign render``: the exact manifests the operator would apply, for GitOps previews."""

from __future__ import annotations

import yaml
from click.testing import CliRunner
from render_inputs import HERE, SAMPLES  # next to this file

from sovereign.cli import main

FULL = str(SAMPLES / "full.yaml")
FACTS = str(HERE / "facts.yaml")


def _render(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, ["render", *args], input=stdin)


def test_render_prints_the_operators_manifests_deterministically() -> None:
    first = _render("-f", FULL, "--facts", FACTS, "-n", "gov-qa")
    second = _render("-f", FULL, "--facts", FACTS, "-n", "gov-qa")

    assert first.exit_code == 0, first.output
    assert first.output == second.output
    documents = list(yaml.safe_load_all(first.output))
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert ("NodePool", "gov-qa-citizen-services-h100") in kinds
    assert ("Node", "gpu-mec1-2") in kinds and ("Node", "gpu-euw1-0") not in kinds
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "chat")
    assert deployment["metadata"]["namespace"] == "gov-qa"
    # A file has no uid yet: ownerReferences are left to the operator.
    assert "ownerReferences" not in deployment["metadata"]


def test_render_without_facts_chooses_no_existing_nodes() -> None:
    result = _render("-f", "-", "-n", "gov-qa", stdin=open(FULL).read())

    assert result.exit_code == 0, result.output
    assert "kind: Node\n" not in result.output


def test_invalid_stack_is_refused_with_the_field_path() -> None:
    document = yaml.safe_load(open(FULL).read())
    document["spec"]["models"][0]["nodePool"] = "h200"

    result = _render("-f", "-", stdin=yaml.safe_dump(document))

    assert result.exit_code == 1
    assert "spec.models[0].nodePool" in result.output
