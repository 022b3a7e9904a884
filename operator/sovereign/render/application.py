"""Applications: per application, a Deployment and (when it has a port) a ClusterIP Service.

Each model the application names is given to it by its logical name, never by the model behind
it: ``SOVEREIGN_MODEL_<NAME>_URL`` (the Service's OpenAI-compatible base URL) and
``SOVEREIGN_MODEL_<NAME>_NAME`` (the name to put in requests), plus ``OPENAI_BASE_URL`` when it
uses exactly one model. Swapping a model therefore changes nothing here, and the application's
pods are not rolled. Each store it names is given as ``SOVEREIGN_STORE_<NAME>_*`` (volume
stores are also mounted at ``/data/<store>``), plus the AWS SDK variables when it uses exactly
one S3 store. The application's own ``env`` entries win over these. Every variable is sorted by
name; the pods are pinned to the allowed regions. An application held back by a failed data
store (``facts.held_back``) gets ``replicas: 0``. Pure; called by ``render.stack``.
"""

from __future__ import annotations

from typing import Any

from sovereign.api import Application, SovereignStack
from sovereign.render import names, pod, storage
from sovereign.render.facts import ClusterFacts
from sovereign.render.names import Component
from sovereign.render.service import cluster_ip_service


def render_application(*, stack: SovereignStack, app: Application, facts: ClusterFacts) -> list[dict[str, Any]]:
    """The objects of one application, in a stable order."""
    objects = [_deployment(stack, app, held=app.name in facts.held_back)]
    if app.port is not None:
        objects.append(cluster_ip_service(stack=stack, name=app.name, component=Component.APPLICATION, port=app.port))
    return objects


def application_env(*, stack: SovereignStack, app: Application) -> list[pod.EnvVar]:
    """The container's environment: models, stores, then the application's own variables."""
    namespace = names.stack_namespace(stack)
    env: list[pod.EnvVar] = []
    for model in app.models:
        url = names.model_endpoint(namespace=namespace, model=model)
        key = names.env_key(model)
        env += [pod.value(f"SOVEREIGN_MODEL_{key}_URL", url), pod.value(f"SOVEREIGN_MODEL_{key}_NAME", model)]
    if len(app.models) == 1:
        env.append(pod.value("OPENAI_BASE_URL", names.model_endpoint(namespace=namespace, model=app.models[0])))
    stores = [store for store in stack.spec.data_stores if store.name in app.data_stores]
    for store in stores:
        env += storage.store_env(store)
    s3_stores = [store for store in stores if store.s3 is not None]
    if len(s3_stores) == 1:
        env += storage.sdk_env(s3_stores[0])
    env += [pod.value(variable.name, variable.value) for variable in app.env]
    return pod.sorted_env(env)


def _deployment(stack: SovereignStack, app: Application, *, held: bool) -> dict[str, Any]:
    volume_stores = [s for s in stack.spec.data_stores if s.name in app.data_stores and s.volume is not None]
    mounts = [storage.volume_mount(store) for store in volume_stores]
    container: dict[str, Any] = {"name": app.name, "image": app.image, "env": application_env(stack=stack, app=app)}
    if app.port is not None:
        container["ports"] = [{"name": "http", "containerPort": app.port, "protocol": "TCP"}]
    if app.resources is not None:
        resources = {
            part: dict(sorted(values.items()))
            for part, values in (("requests", app.resources.requests), ("limits", app.resources.limits))
            if values
        }
        if resources:
            container["resources"] = resources
    if mounts:
        container["volumeMounts"] = [mount for _, mount in mounts]
    pod_spec: dict[str, Any] = {
        "affinity": pod.node_affinity(regions=stack.spec.residency.regions),
        "enableServiceLinks": False,
        "containers": [container],
    }
    if mounts:
        pod_spec["volumes"] = [volume for volume, _ in mounts]
    return names.stamped({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(stack, name=app.name, component=Component.APPLICATION, entry=app.name),
        "spec": {
            "replicas": 0 if held else app.replicas,
            "selector": {"matchLabels": names.selector_labels(stack, component=Component.APPLICATION, name=app.name)},
            "template": {
                "metadata": {"labels": names.labels(stack, component=Component.APPLICATION, name=app.name)},
                "spec": pod_spec,
            },
        },
    })


