"""Rendering the chart for the chart's unit tests: ``helm template`` with the pinned helm build."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from chart_helpers import Rendered

from sovereign_dev import chart


@pytest.fixture(scope="session")
def render() -> Callable[..., Rendered]:
    """``render(values)``: the chart's objects for those values, release and namespace as the
    kustomize manifests have them (``sovereign-stack-operator`` in ``sovereign-system``)."""
    cache: dict[str, Rendered] = {}

    def rendered(values: Mapping[str, Any] | None = None, **options: Any) -> Rendered:
        key = repr((sorted((values or {}).items()), sorted(options.items())))
        if key not in cache:
            cache[key] = chart.objects(chart.render(values=values, **options))
        return cache[key]

    return rendered
