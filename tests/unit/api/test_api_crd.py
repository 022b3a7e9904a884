"""The generated CRD: committed copy up to date, structural, documented, wired to every rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sovereign.api import models
from sovereign.api.crd import CRD_FILE, REGENERATE_HINT, crd, crd_yaml
from sovereign.cli import main

REPO = Path(__file__).resolve().parents[3]


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_is_the_generated_one() -> None:
    committed = (REPO / CRD_FILE).read_text()

    assert committed == crd_yaml(), f"{CRD_FILE} is stale: run `{REGENERATE_HINT}` and commit the result"


def test_sovereign_crds_prints_the_crd() -> None:
    result = CliRunner().invoke(main, ["crds"])

    assert result.exit_code == 0, result.output
    assert result.output == crd_yaml()
    assert yaml.safe_load(result.output)["metadata"]["name"] == "sovereignstacks.sovereign.ai"


def test_names_scope_and_subresources() -> None:
    spec = crd()["spec"]
    version = spec["versions"][0]

    assert spec["group"] == "sovereign.ai" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["sstack"] and spec["names"]["categories"] == ["sovereign"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [column["name"] for column in version["additionalPrinterColumns"] if "priority" not in column] == [
        "Ready", "Jurisdiction", "Models", "Violations", "Age",
    ]  # fmt: skip


def test_every_field_has_a_description() -> None:
    undocumented = [
        f"{path}.{name}"
        for path, node in _nodes(_schema())
        for name, child in node.get("properties", {}).items()
        if not child.get("description") and f"{path}.{name}" != ".metadata"  # the apiserver forbids one there
    ]

    assert undocumented == []


def test_schema_is_structural() -> None:
    """What the apiserver refuses in a CRD schema, or what pydantic-isms would leak into it."""
    for path, node in _nodes(_schema()):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title"} & node.keys(), path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node, path
        assert node.get("default", ...) is not None, path
        if node["type"] == "array" and node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"]), path


def test_documented_defaults_are_in_the_schema() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    model = spec["models"]["items"]["properties"]

    assert spec["residency"]["properties"]["enforcement"]["default"] == "Enforce"
    assert spec["dataStores"]["items"]["properties"]["deletionPolicy"]["default"] == "Retain"
    assert (model["engine"]["default"], model["replicas"]["default"]) == ("vllm", 1)
    assert model["engine"]["enum"] == ["vllm", "llama-cpp"]
    # No schema default: it depends on the engine (1 GPU for vllm, none for llama-cpp).
    assert "default" not in model["gpusPerReplica"]
    # No schema default: unset, the startup window grows with the weights (render.deadlines).
    assert "default" not in model["startupTimeoutSeconds"]
    assert model["weightsThroughput"]["default"] == "50Mi"
    assert model["cache"]["default"] == {} and model["cache"]["properties"]["size"]["default"] == "200Gi"


def test_lists_of_named_entries_are_maps_keyed_by_name() -> None:
    spec = _schema()["properties"]["spec"]["properties"]

    for name in ("nodePools", "dataStores", "models", "applications"):
        assert spec[name]["x-kubernetes-list-type"] == "map", name
        assert spec[name]["x-kubernetes-list-map-keys"] == ["name"], name
        assert spec[name]["maxItems"] > 0, name


def _api_classes() -> list[type[models.ApiObject]]:
    return [
        value
        for value in vars(models).values()
        if isinstance(value, type) and issubclass(value, models.ApiObject) and value.object_rules
    ]


@pytest.mark.parametrize("cls", _api_classes(), ids=lambda cls: cls.__name__)
def test_every_object_rule_is_in_the_crd(cls: type[models.ApiObject]) -> None:
    rules_in_crd = [
        rule["rule"] for _, node in _nodes(_schema()) for rule in node.get("x-kubernetes-validations", [])
    ]

    for rule in cls.object_rules:
        assert rules_in_crd.count(rule.cel) == 1, rule.cel
