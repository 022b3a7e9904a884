"""With the operator stopped, residency still holds in governed namespaces, and nothing else is touched.

The operator runs as ``sovereign run`` (a subprocess, as in the chart) until it has applied the
residency admission policies and governed one namespace; then it is stopped. The apiserver keeps
evaluating the policies by itself: pods, workloads and Services that break a rule are still
denied, and new pods still get the region affinity. Only the lookups (a pod naming a node) wait,
failing closed. In a namespace without a stack, everything is admitted as it was written.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from residency_helpers import make_stack, wait_governed
from sovereign_dev.cluster import free_port
from sovereign_dev.scenario import WebhookOperator, remove_residency_admission

REGION = "topology.kubernetes.io/region"
POLICY = "ValidatingAdmissionPolicy 'sovereign-residency-{}' with binding 'sovereign-residency-{}-enforce' denied"


@pytest.fixture(scope="module")
def namespaces(cluster, api_client, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(governed, free): the governed one holds an enforcing stack; the operator is stopped."""
    core = client.CoreV1Api(api_client)
    governed, free = (f"down-{what}-{uuid.uuid4().hex[:6]}" for what in ("governed", "free"))
    for name in (governed, free):
        core.create_namespace({"metadata": {"name": name}})
    log = Path(tmp_path_factory.mktemp("operator-down")) / "operator.log"
    operator = WebhookOperator(kubeconfig=str(cluster.kubeconfig), namespaces=[governed], log=log,
                               audit_seconds=2, metrics_port=free_port()).start()
    try:
        make_stack(api_client, governed)
        wait_governed(api_client, governed)
        operator.stop()
        assert not operator.running()
        yield governed, free
    finally:
        operator.stop()
        remove_residency_admission(api_client)
        for name in (governed, free):
            core.delete_namespace(name)


def pod(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.gov.qa/app:1"}], **spec}}


def refused(create, namespace: str, body: dict) -> str:
    with pytest.raises(ApiException) as error:
        create(namespace, body, dry_run="All")
    return error.value.body


def test_the_policies_still_deny_what_breaks_the_rules(namespaces, api_client):
    governed, _ = namespaces
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "abroad"},
                  "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {
                      "metadata": {"labels": {"app": "a"}},
                      "spec": pod("x", nodeSelector={REGION: "eu-west-1"})["spec"]}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "public"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}

    assert POLICY.format("workloads", "workloads") in refused(
        core.create_namespaced_pod, governed, pod("abroad", nodeSelector={REGION: "eu-west-1"}))
    assert "breaks HostNamespacesNotAllowed" in refused(core.create_namespaced_pod, governed,
                                                        pod("host", hostNetwork=True))
    assert f"Deployment {governed}/abroad breaks PodOutsideRegions" in refused(
        apps.create_namespaced_deployment, governed, deployment)
    assert POLICY.format("services", "services") in refused(core.create_namespaced_service, governed, service)


def test_new_pods_are_still_pinned_to_the_regions(namespaces, api_client):
    governed, _ = namespaces

    created = client.CoreV1Api(api_client).create_namespaced_pod(governed, pod("plain"), dry_run="All")

    term, = created.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert [(e.key, e.operator, e.values) for e in term.match_expressions] == [(REGION, "In", ["me-central-1"])]


def test_only_lookups_wait_and_they_fail_closed(namespaces, api_client):
    governed, _ = namespaces

    message = refused(client.CoreV1Api(api_client).create_namespaced_pod, governed,
                      pod("named", nodeName="cpu-mec1-0"))

    assert 'failed calling webhook \\"pod-node.sovereign.ai\\"' in message


def test_nothing_outside_governed_namespaces_is_touched(namespaces, api_client):
    _, free = namespaces
    core = client.CoreV1Api(api_client)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "public"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}

    abroad = core.create_namespaced_pod(free, pod("abroad", nodeSelector={REGION: "eu-west-1"}), dry_run="All")
    named = core.create_namespaced_pod(free, pod("named", nodeName="cpu-euw1-0"), dry_run="All")
    host = core.create_namespaced_pod(free, pod("host", hostNetwork=True), dry_run="All")
    public = core.create_namespaced_service(free, service, dry_run="All")

    assert (abroad.spec.affinity, named.spec.affinity, host.spec.affinity) == (None, None, None)
    assert named.spec.node_name == "cpu-euw1-0"
    assert host.spec.host_network is True
    assert public.spec.type == "LoadBalancer"
