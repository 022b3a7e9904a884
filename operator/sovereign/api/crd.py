"""The SovereignStack CustomResourceDefinition, generated from the pydantic models.

Pydantic writes JSON Schema (draft 2020-12); the apiserver wants a *structural* OpenAPI v3
schema. ``structural`` bridges the two: it inlines ``$ref``s, drops ``title`` and
``additionalProperties: false`` (unknown fields are pruned, or rejected by strict field
validation), turns ``X | None`` into an optional ``X`` and ``const`` into ``enum``, and keeps
descriptions, defaults, bounds and the ``x-kubernetes-*`` extensions the models declare.

Called by ``sovereign crds`` (which prints ``crd_yaml()``) and by the test that fails when
``crds/sovereign.ai_sovereignstacks.yaml`` is stale.
"""

from __future__ import annotations

from typing import Any

import yaml

from sovereign.api.models import (
    API_VERSION,
    CATEGORY,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    SovereignStack,
    SovereignStackSpec,
    SovereignStackStatus,
)

CRD_FILE = f"crds/{GROUP}_{PLURAL}.yaml"
REGENERATE_HINT = f"sovereign crds > {CRD_FILE}"

# Key order inside each schema node: what a reader looks for first comes first.
_KEY_ORDER = (
    "description", "type", "format", "enum", "default", "minimum", "maximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "minProperties", "maxProperties", "items", "properties",
    "additionalProperties", "required", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
)  # fmt: skip

_RULE_KEY_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason")

_READY = '.status.conditions[?(@.type=="Ready")]'
PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status",
     "description": "Status of the Ready condition."},
    {"name": "Jurisdiction", "type": "string", "jsonPath": ".spec.residency.jurisdiction",
     "description": "Country whose law governs the stack."},
    {"name": "Models", "type": "string", "jsonPath": ".status.modelsReady",
     "description": "Models with every replica ready, out of all."},
    {"name": "Violations", "type": "integer", "jsonPath": ".status.violationCount",
     "description": "Residency violations currently recorded."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Enforcement", "type": "string", "jsonPath": ".spec.residency.enforcement", "priority": 1,
     "description": "Enforce or Audit."},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "priority": 1,
     "description": "Reason of the Ready condition."},
]  # fmt: skip


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 form of a pydantic JSON schema (one model, with its ``$defs``)."""
    return _convert(schema, schema.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    node.pop("$defs", None)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Keys next to the reference (the field's description, default) win over the referenced model's.
        node = {**target, **node}
    for union in ("anyOf", "oneOf"):
        if union in node:
            branches = [branch for branch in node.pop(union) if branch.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express a union of {len(branches)} types in a structural schema: {branches}")
            node = {**_convert(branches[0], defs), **node}
            if node.get("default", ...) is None:
                del node["default"]
    if "allOf" in node:
        (only,) = node.pop("allOf")
        node = {**_convert(only, defs), **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {name: _convert(value, defs) for name, value in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = _convert(node["items"], defs)
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    if "x-kubernetes-validations" in node:
        node["x-kubernetes-validations"] = [
            {key: rule[key] for key in _RULE_KEY_ORDER if key in rule} for rule in node["x-kubernetes-validations"]
        ]
    return {key: node[key] for key in sorted(node, key=_key_rank)}


def _key_rank(key: str) -> tuple[int, str]:
    return (_KEY_ORDER.index(key) if key in _KEY_ORDER else len(_KEY_ORDER), key)


def _model_schema(model: type[SovereignStackSpec] | type[SovereignStackStatus]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def open_api_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the SovereignStack version."""
    fields = SovereignStack.model_fields
    spec = {**_model_schema(SovereignStackSpec), "description": fields["spec"].description}
    status = {**_model_schema(SovereignStackStatus), "description": fields["status"].description}
    return {
        "description": " ".join((SovereignStack.__doc__ or "").split()),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object.",
                "type": "string",
            },
            "kind": {"description": "Kind is a string value representing the REST resource this object represents.",
                     "type": "string"},
            # The apiserver allows nothing but the type here (metadata is its own schema).
            "metadata": {"type": "object"},
            "spec": {key: spec[key] for key in sorted(spec, key=_key_rank)},
            "status": {key: status[key] for key in sorted(status, key=_key_rank)},
        },
        "required": ["spec"],
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of SovereignStack."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed in ``crds/``: deterministic, with a do-not-edit header."""
    header = (
        f"# {API_VERSION} {KIND}: generated from operator/sovereign/api/models.py. Do not edit;\n"
        f"# change the models and run `{REGENERATE_HINT}`.\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)
