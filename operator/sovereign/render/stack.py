"""The whole desired state of a stack: every child, in a stable order.

``render_stack(stack, facts)`` calls each builder and returns their objects in one order that
depends only on the spec: the network policy, volume claims, node pools, then each model's and
each application's objects in spec order. The same input gives the same list, byte for byte
once serialised, which is what lets GitOps previews (``sovereign render``) match what the
operator applies and keeps resyncs free of writes. Two entries that would make the same object
(a model and an application of the same name both want Deployment and Service ``<name>``) are
a ``RenderError`` naming both, not a silent overwrite.

Pure. Called by ``services.reconcile`` (which the CLI's ``render`` command also uses).
"""

from __future__ import annotations

from typing import Any

from sovereign.api import SovereignStack
from sovereign.render import names
from sovereign.render.application import render_application
from sovereign.render.facts import ClusterFacts
from sovereign.render.inference import render_model
from sovereign.render.network import render_network_policy
from sovereign.render.nodepool import render_node_pool
from sovereign.render.storage import render_data_store


class RenderError(ValueError):
    """The spec passed validation but cannot be turned into objects; the message says why and how to fix it."""


def render_stack(stack: SovereignStack, facts: ClusterFacts) -> list[dict[str, Any]]:
    """Every object the stack should have, in a stable order."""
    parts: list[tuple[str, list[dict[str, Any]]]] = [("spec.residency", render_network_policy(stack=stack))]
    spec = stack.spec
    for index, store in enumerate(spec.data_stores):
        parts.append((f"spec.dataStores[{index}] ({store.name})", render_data_store(stack=stack, store=store)))
    for index, pool in enumerate(spec.node_pools):
        parts.append((f"spec.nodePools[{index}] ({pool.name})", render_node_pool(stack=stack, pool=pool, facts=facts)))
    for index, model in enumerate(spec.models):
        parts.append((f"spec.models[{index}] ({model.name})", render_model(stack=stack, model=model, facts=facts)))
    for index, app in enumerate(spec.applications):
        parts.append((f"spec.applications[{index}] ({app.name})", render_application(stack=stack, app=app, facts=facts)))
    seen: dict[names.ObjectKey, str] = {}
    desired: list[dict[str, Any]] = []
    for source, objects in parts:
        for obj in objects:
            key = names.object_key(obj)
            if key in seen:
                raise RenderError(
                    f"{source} and {seen[key]} both need {key}; give them different names"
                )
            seen[key] = source
            desired.append(obj)
    return desired
