"""Offline validation of SovereignStack documents: the apiserver's rules, run in Python.

``parse_stack`` turns a document (a dict from YAML or from the apiserver) into a
``SovereignStack`` or raises ``InvalidStackError`` listing every ``FieldError``: the field path
(``spec.models[1].nodePool``), the bad value and what is allowed. It runs the pydantic field
checks and then the object rules and list uniqueness the CRD declares, from the same
definitions, so a stack that passes here is accepted by the apiserver and the other way round.

Called by ``sovereign validate`` (CI, pre-commit) and by the operator's handlers, which turn an
``InvalidStackError`` into a Ready=False condition instead of reconciling a bad spec.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from sovereign.api.models import API_VERSION, KIND, ApiObject, SovereignStack, list_type
from sovereign.api.types import MISSING

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with a document: where, what was there, and what is allowed."""

    path: str
    value: Any
    message: str

    def __str__(self) -> str:
        if self.value is MISSING:
            return f"{self.path}: {self.message}"
        return f"{self.path}: {self.message} (got {_show(self.value)})"


class InvalidStackError(ValueError):
    """A SovereignStack document breaks the API's rules; ``errors`` says where and how."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("invalid SovereignStack:\n" + "\n".join(f"  {error}" for error in errors))


def parse_stack(document: Any) -> SovereignStack:
    """The stack a document describes, checked against every rule of the CRD."""
    errors = _document_errors(document)
    if errors:
        raise InvalidStackError(errors)
    try:
        # JSON mode in strict mode: "2" is not an integer, exactly as for the apiserver.
        stack = SovereignStack.model_validate_json(json.dumps(document, default=_plain), strict=True)
    except ValidationError as error:
        raise InvalidStackError([_from_pydantic(detail) for detail in error.errors()]) from None
    errors = list(_object_errors(stack.spec, ("spec",)))
    if errors:
        raise InvalidStackError(errors)
    return stack


def _plain(value: Any) -> Any:
    """Mappings and sequences that are not dicts and lists (a Kopf body) as JSON sees them."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return list(value)
    raise TypeError(f"cannot represent {type(value).__name__} in JSON")


def validate_document(document: Any) -> list[FieldError]:
    """Every error in a SovereignStack document; empty when the apiserver would accept it."""
    try:
        parse_stack(document)
    except InvalidStackError as error:
        return error.errors
    return []


def is_stack_document(document: Any) -> bool:
    """Whether a document claims to be a SovereignStack (any sovereign.ai version), so it is checked;
    other kinds in a multi-document file are somebody else's business."""
    if not isinstance(document, Mapping):
        return False
    api_version = document.get("apiVersion")
    group = api_version.split("/")[0] if isinstance(api_version, str) else None
    return document.get("kind") == KIND or group == API_VERSION.split("/")[0]


class _KubernetesYamlLoader(yaml.SafeLoader):
    """YAML as kubectl reads it: timestamps stay strings (a date-like env value is a string)."""


_KubernetesYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_documents(text: str) -> list[Any]:
    """The documents of a (multi-document) YAML text, empty documents left out.

    Raises ``yaml.YAMLError`` for text that is not YAML.
    """
    return [document for document in yaml.load_all(text, Loader=_KubernetesYamlLoader) if document is not None]


# --- checks the pydantic models cannot express --------------------------------------------------


def _document_errors(document: Any) -> list[FieldError]:
    if not isinstance(document, Mapping):
        return [FieldError("<document>", document, "must be a mapping with apiVersion, kind, metadata and spec")]
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping) or not (metadata.get("name") or metadata.get("generateName")):
        return [FieldError("metadata.name", MISSING, "is required (or metadata.generateName)")]
    return []


def rule_errors(value: ApiObject, *, path: Path = ()) -> list[FieldError]:
    """The object rules ``value`` and the objects it holds break (with list uniqueness), for a
    block of a stack read on its own, such as ``sovereign evaluate``'s evaluation."""
    return list(_object_errors(value, path))


def _object_errors(value: Any, path: Path) -> Iterator[FieldError]:
    """Object rules and list-type uniqueness, walking the parsed spec."""
    if isinstance(value, ApiObject):
        for rule in type(value).object_rules:
            for failure in rule.failures(value):
                yield FieldError(_path(path + failure.path), failure.value, failure.message)
        for name, field in type(value).model_fields.items():
            child = getattr(value, name)
            child_path = path + (field.alias or name,)
            kind = list_type(field)
            if kind is not None:
                keys = field.json_schema_extra.get("x-kubernetes-list-map-keys", [])  # type: ignore[union-attr]
                yield from _duplicates(child, child_path, keys)
            yield from _object_errors(child, child_path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _object_errors(item, path + (index,))


def _duplicates(items: list[Any], path: Path, keys: list[str]) -> Iterator[FieldError]:
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        key = tuple(getattr(item, key) for key in keys) if keys else item
        if key in seen:
            shown = key[0] if len(keys) == 1 else key
            where = (index, keys[0]) if keys else (index,)
            what = f"{keys[0]}s" if len(keys) == 1 else "entries"
            yield FieldError(
                _path(path + where),
                shown,
                f"duplicate of entry {seen[key]}; {what} in {_path(path)} must be unique",
            )
        else:
            seen[key] = index


# --- pydantic errors in the user's words --------------------------------------------------------


def _from_pydantic(detail: Mapping[str, Any]) -> FieldError:
    loc: Path = tuple(detail["loc"])
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail.get("input", MISSING)
    if kind == "missing":
        return FieldError(_path(loc), MISSING, "is required")
    if kind == "extra_forbidden":
        allowed = _field_names_at(loc[:-1])
        return FieldError(_path(loc), value, f"unknown field; allowed here: {', '.join(allowed)}")
    return FieldError(_path(loc), value, _message(kind, ctx, detail["msg"]))


def _message(kind: str, ctx: Mapping[str, Any], fallback: str) -> str:
    simple = {
        "int_type": "must be an integer",
        "int_from_float": "must be an integer",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping of fields",
        "model_attributes_type": "must be a mapping of fields",
        "literal_error": f"must be {ctx.get('expected')}",
        "enum": f"must be {ctx.get('expected')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters long",
        "string_too_short": "must not be empty"
        if ctx.get("min_length") == 1
        else f"must be at least {ctx.get('min_length')} characters long",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": f"must have at most {ctx.get('max_length')} items",
    }
    if kind in simple:
        return simple[kind]
    return fallback[:1].lower() + fallback[1:]


def _field_names_at(loc: Path) -> list[str]:
    """Wire names of the fields of the object at ``loc``, for 'unknown field' errors."""
    annotation: Any = SovereignStack
    for part in loc:
        annotation = _strip(annotation)
        if isinstance(part, int) or get_origin(annotation) is dict:
            annotation = get_args(annotation)[-1]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {field.alias or name: field for name, field in annotation.model_fields.items()}
            annotation = fields[part].annotation if part in fields else None
    model = _strip(annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [field.alias or name for name, field in model.model_fields.items()]
    return []


def _strip(annotation: Any) -> Any:
    """The type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
        else:
            return annotation


def _path(parts: Path) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
