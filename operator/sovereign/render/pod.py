"""Pieces every rendered pod shares: the residency node affinity and environment variables.

Sovereignty rule: every pod the operator renders requires nodes in the stack's allowed regions;
``node_affinity`` is the one place that writes it, so no builder can forget it. Environment
lists are sorted by name, so the same spec always gives the same pod template (an unsorted
list would roll Deployments for nothing). Pure; called by ``render.inference`` and
``render.application``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sovereign.render.names import REGION_LABEL

EnvVar = dict[str, Any]


def node_affinity(*, regions: Iterable[str], also: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A required node affinity to ``regions`` (and to each ``also`` label having that value)."""
    expressions = [{"key": REGION_LABEL, "operator": "In", "values": sorted(set(regions))}]
    expressions += [{"key": key, "operator": "In", "values": [value]} for key, value in (also or {}).items()]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def value(name: str, text: str) -> EnvVar:
    return {"name": name, "value": text}


def secret_value(name: str, *, secret: str, key: str) -> EnvVar:
    """A variable read from a Secret at container start: the value never appears in a manifest."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def sorted_env(variables: Iterable[EnvVar]) -> list[EnvVar]:
    """Variables by name; a later variable of the same name replaces an earlier one."""
    by_name = {variable["name"]: variable for variable in variables}
    return [by_name[name] for name in sorted(by_name)]
