"""The ClusterIP Service in front of a model's or an application's pods. Pure; called by
``render.inference`` and ``render.application``."""

from __future__ import annotations

from typing import Any

from sovereign.api import SovereignStack
from sovereign.render import names
from sovereign.render.names import Component


def cluster_ip_service(*, stack: SovereignStack, name: str, component: Component, port: int) -> dict[str, Any]:
    """Service ``name`` selecting the pods of entry ``name``, ``port`` -> their ``http`` port."""
    return names.stamped({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(stack, name=name, component=component, entry=name),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(stack, component=component, name=name),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    })
