"""Helpers of the chart's unit tests."""

from __future__ import annotations

from typing import Any

Rendered = list[dict[str, Any]]


def one(objects: Rendered, kind: str, name: str | None = None) -> dict[str, Any]:
    """The only object of ``kind`` (and ``name``), failing clearly when there is not exactly one."""
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]
