"""The operator's Kubernetes client against the real apiserver: server-side apply of what the
builders render (valid against the built-in and upstream CRD schemas), reads by label, prune, and
the typed errors a reconcile pass acts on."""

from __future__ import annotations

import pytest
from kubernetes import client

from sovereign_dev.scenario import full_sample
from sovereign.api import parse_stack
from sovereign.kube import errors
from sovereign.kube.client import FIELD_MANAGER, Kube
from sovereign.kube.resources import DEPLOYMENT, SERVICE, ResourceType, resource_type
from sovereign.render.facts import ClusterFacts
from sovereign.services.reconcile import desired_objects


@pytest.fixture
def kube(cluster) -> Kube:
    connected = Kube.connect(kubeconfig=cluster.kubeconfig)
    yield connected
    connected.close()


def _desired(namespace: str) -> list[dict]:
    document = full_sample()
    document["metadata"]["namespace"] = namespace
    return desired_objects(parse_stack(document), ClusterFacts())


def test_every_rendered_object_is_accepted_by_the_apiserver_schemas(kube, namespace) -> None:
    for obj in _desired(namespace):
        stored = kube.apply(obj, dry_run=True)
        assert stored["kind"] == obj["kind"]
        assert stored["metadata"]["labels"] == obj["metadata"]["labels"]


def test_the_upstream_pod_monitor_schema_keeps_every_rendered_field(kube, namespace) -> None:
    """A field the upstream CRD does not know would be pruned silently, and the scrape would miss it."""
    monitors = [o for o in _desired(namespace) if o["kind"] == "PodMonitor"]

    assert [m["metadata"]["name"] for m in monitors] == ["chat", "embed"]
    for monitor in monitors:
        assert kube.apply(monitor, dry_run=True)["spec"] == monitor["spec"]


def test_apply_list_and_delete_by_label(kube, api_client, namespace) -> None:
    service = next(o for o in _desired(namespace) if o["kind"] == "Service")

    created = kube.apply(service)
    again = kube.apply(service)

    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]  # no change, no write
    managers = {m["manager"] for m in created["metadata"]["managedFields"]}
    assert managers == {FIELD_MANAGER}
    listed = kube.list(SERVICE, namespace=namespace, selector="sovereign.ai/stack=citizen-services")
    assert [(s["kind"], s["metadata"]["name"]) for s in listed] == [("Service", "chat")]
    assert kube.delete(SERVICE, name="chat", namespace=namespace, uid=created["metadata"]["uid"]) is True
    assert kube.delete(SERVICE, name="chat", namespace=namespace) is False
    assert kube.get(SERVICE, name="chat", namespace=namespace) is None


def test_autoscaled_deployment_leaves_replicas_to_their_other_owner(kube, api_client, namespace) -> None:
    deployment = next(o for o in _desired(namespace) if o["kind"] == "Deployment" and o["metadata"]["name"] == "chat")
    kube.apply(deployment)
    client.AppsV1Api(api_client).patch_namespaced_deployment_scale("chat", namespace, {"spec": {"replicas": 3}})

    stored = kube.apply(deployment)

    assert stored["spec"]["replicas"] == 3


def test_rejected_object_is_an_invalid_error_naming_the_field(kube, namespace) -> None:
    nodepool = next(o for o in _desired(namespace) if o["kind"] == "NodePool")
    nodepool["spec"]["template"]["spec"]["requirements"][0]["operator"] = "Sometimes"

    with pytest.raises(errors.Invalid) as err:
        kube.apply(nodepool, dry_run=True)

    assert err.value.status == 422
    assert "spec.template.spec.requirements[0].operator" in str(err.value)
    assert f"NodePool {nodepool['metadata']['name']}" in str(err.value)


def test_a_kind_that_is_not_served_is_reported_as_such(kube) -> None:
    missing = ResourceType("example.com/v1", "Nothing", "nothings", False)

    with pytest.raises(errors.NotServed):
        kube.list(missing)
    assert resource_type({"apiVersion": "apps/v1", "kind": "Deployment"}) is DEPLOYMENT


def test_unreachable_apiserver_is_unavailable() -> None:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # nothing listens on the discard port
    configuration.verify_ssl = False
    offline = Kube(client.ApiClient(configuration))

    with pytest.raises(errors.Unavailable, match="apiserver unreachable"):
        offline.get(SERVICE, name="chat", namespace="default")
