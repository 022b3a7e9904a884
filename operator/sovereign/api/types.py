"""Field types and rules shared by the SovereignStack models.

Every constraint here exists twice, side by side: once as OpenAPI/CEL for the CRD the apiserver
enforces, once as Python for ``sovereign validate`` and the operator's own parsing. Keeping the two
in one object is what makes them reject the same inputs. Used by ``api.models`` (to declare fields),
``api.crd`` (which reads the schema side) and ``api.validation`` (which runs the object rules).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

#: CRD key under which CEL rules live.
VALIDATIONS = "x-kubernetes-validations"


@dataclass(frozen=True)
class Check:
    """A constraint on one field value: a CEL rule for the apiserver and its Python twin.

    ``pattern`` (a Go-and-Python compatible regular expression) goes into the OpenAPI ``pattern``
    instead of a CEL rule when set; ``message`` is what both sides tell the user.
    """

    message: str
    accepts: Callable[[Any], bool]
    cel: str | None = None
    pattern: str | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if self.pattern is not None:
            json_schema["pattern"] = self.pattern
        if self.cel is not None:
            json_schema.setdefault(VALIDATIONS, []).append({"rule": self.cel, "message": self.message})
        return json_schema

    def _validate(self, value: Any) -> Any:
        if not self.accepts(value):
            raise PydanticCustomError("sovereign_check", self.message)
        return value


def matches(pattern: str, message: str) -> Check:
    """A string check by regular expression, reported with ``message`` instead of the regex."""
    regex = re.compile(pattern)
    return Check(message=message, accepts=lambda value: regex.fullmatch(value) is not None, pattern=pattern)


class _Missing:
    """The value of a field that is not there (shown as nothing rather than as None)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class RuleFailure:
    """One failed object rule, relative to the object the rule is declared on."""

    path: tuple[str | int, ...]
    value: Any
    message: str


@dataclass(frozen=True)
class Rule:
    """A rule over several fields of one object (a CEL rule on that object in the CRD).

    ``message`` is what the apiserver says; ``message_expression`` (CEL, built with
    ``cel_format``) can name the offending entry instead.
    ``failures`` is the Python twin: given the parsed object it yields what is wrong, each with
    the exact path below the object, so offline errors point at ``spec.models[1].nodePool`` where
    the apiserver can only point at ``field_path`` (CEL has no list index).
    """

    cel: str
    message: str
    field_path: str | None
    failures: Callable[[Any], Iterable[RuleFailure]]
    message_expression: str | None = None

    def to_crd(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            rule["messageExpression"] = self.message_expression
        if self.field_path:
            rule |= {"fieldPath": self.field_path, "reason": "FieldValueInvalid"}
        return rule


def cel_format(template: str, *arguments: str) -> str:
    """A CEL message expression filling ``%s``/``%d`` in ``template`` with CEL ``arguments``.

    ``format`` rather than ``+``: the apiserver's cost estimate of concatenating a string taken
    from a filtered list is unbounded, and it refuses such a CRD; ``format`` is priced sanely.
    """
    literal = template.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{literal}'.format([{', '.join(arguments)}])"


# --- names and strings -------------------------------------------------------------------------

NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE = (
    "must be a DNS-1035 label: at most 63 lower case letters, digits or '-', "
    "starting with a letter and ending with a letter or digit, such as 'chat' or 'h100-pool'"
)
Name = Annotated[str, Field(min_length=1, max_length=63), matches(NAME_PATTERN, NAME_RULE)]
"""The name of an entry in the stack (a node pool, store, model or application); it names
Kubernetes objects (Services, PVCs, NodePools), hence DNS-1035."""

# A label value that is not empty (region names are label values of topology.kubernetes.io/region).
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LabelValue = Annotated[
    str,
    Field(min_length=1, max_length=63),
    matches(
        LABEL_VALUE_PATTERN,
        "must be a Kubernetes label value: at most 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit, such as 'me-central-1'",
    ),
]

LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)

Jurisdiction = Annotated[
    str,
    Field(min_length=2, max_length=2),
    matches(r"^[A-Z]{2}$", "must be an ISO 3166-1 alpha-2 country code in upper case, such as QA or DE"),
]

Image = Annotated[
    str,
    Field(min_length=1, max_length=512),
    matches(r"^[^\s]+$", "must be a container image reference without spaces, such as registry.example/app:1.0"),
]

# --- quantities --------------------------------------------------------------------------------

_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("0.001"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)}


def parse_quantity(text: str) -> Decimal:
    """The value of a non-negative Kubernetes quantity string ("200Gi" -> 214748364800).

    Raises ``ValueError`` for anything the apiserver's ``resource.Quantity`` would not accept
    as a plain non-negative quantity.
    """
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    try:
        number = Decimal(match["number"])
    except InvalidOperation as error:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from error
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * Decimal(10) ** int(suffix[1:])


def _is_positive_quantity(text: str) -> bool:
    try:
        return parse_quantity(text) > 0
    except ValueError:
        return False


QUANTITY_RULE = "must be a positive Kubernetes quantity such as 200Gi, 1.5Ti, 500M or 250m"
Quantity = Annotated[
    str,
    Field(max_length=64),
    Check(
        message=QUANTITY_RULE,
        accepts=_is_positive_quantity,
        # The explicit sign check keeps "+1Gi" out on both sides; Python's parser never accepts a sign.
        cel="!self.startsWith('+') && isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
    ),
]
"""A positive Kubernetes quantity ("200Gi"), kept as the user wrote it so manifests round-trip."""


# --- networks ----------------------------------------------------------------------------------


def _is_cidr(text: str) -> bool:
    if "/" not in text:
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


Cidr = Annotated[
    str,
    Field(min_length=1, max_length=64),
    Check(
        message="must be an IPv4 or IPv6 CIDR such as 10.20.0.0/16 or fd00::/8",
        accepts=_is_cidr,
        cel="isCIDR(self)",
    ),
]
