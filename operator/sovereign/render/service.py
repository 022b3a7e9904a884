"""The ClusterIP Service in front of a model's or an application's pods. Pure; called by
``render.inference`` and ``render.application``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sovereign.api import SovereignStack
from sovereign.render import names
from sovereign.render.names import Component


def cluster_ip_service(*, stack: SovereignStack, name: str, component: Component, port: int,
                       entry: str | None = None, revision: str | None = None,
                       annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Service ``name`` selecting the pods of entry ``entry`` (default ``name``), of one revision
    when ``revision`` is given (a blue/green model), ``port`` -> their ``http`` port."""
    entry = entry or name
    selector = names.selector_labels(stack, component=component, name=entry)
    if revision is not None:
        selector[names.REVISION_LABEL] = revision
    return names.stamped({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(stack, name=name, component=component, entry=entry, annotations=annotations),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    })
