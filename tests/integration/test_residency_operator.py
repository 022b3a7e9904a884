"""Residency enforcement against the real local control plane: admission and the audit.

The operator's residency handlers run in this process (``residency_helpers.operator``): the local
kube-apiserver evaluates the residency admission policies itself and calls the operator's lookup
webhooks (node names, claims, stacks), and the audit metric can be read directly. Pods land on the simulated KWOK nodes: CPU and GPU nodes in
me-central-1 and eu-west-1.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from residency_helpers import (
    AUDIT_SECONDS,
    WAIT,
    governed,
    make_stack,
    operator,
    read_stack,
    wait_governed,
)
from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev.cluster import wait_until
from sovereign.render.names import ENFORCEMENT_LABEL, GOVERNED_LABEL
from sovereign.metrics import RESIDENCY_VIOLATIONS, WEBHOOK_DECISIONS

__all__ = ["governed", "operator"]  # fixtures used by name
REGION = "topology.kubernetes.io/region"
REGION_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": REGION, "operator": "In", "values": ["me-central-1"]}]}]}}}


def pod(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.gov.qa/app:1"}], **spec}}


def create_refused(create, namespace: str, body: dict) -> str:
    """The message of the apiserver's refusal to create ``body``."""
    with pytest.raises(ApiException) as refused:
        create(namespace, body)
    assert refused.value.status in (400, 403), refused.value.body
    return refused.value.body


POLICY = ("ValidatingAdmissionPolicy 'sovereign-residency-workloads' with binding "
          "'sovereign-residency-workloads-enforce' denied request: ")
LOOKUP = 'admission webhook \\"pod-node.sovereign.ai\\" denied the request: '
PINNED = [
    ("node-selector", {"nodeSelector": {REGION: "eu-west-1"}}, POLICY,
     "nodeSelector topology.kubernetes.io/region=eu-west-1 places it in eu-west-1"),
    # Where a node lies takes a lookup: the operator's webhook judges it.
    ("node-name", {"nodeName": "cpu-euw1-0"}, LOOKUP, "nodeName cpu-euw1-0 places it in eu-west-1"),
    ("affinity", {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": REGION, "operator": "In", "values": ["eu-west-1"]}]}]}}}},
     POLICY, "node affinity topology.kubernetes.io/region=eu-west-1 places it in eu-west-1"),
]


@pytest.mark.parametrize("how, spec, source, named", PINNED, ids=[p[0] for p in PINNED])
def test_a_pod_pinned_outside_the_regions_is_denied_naming_pod_rule_and_regions(governed, api_client, how, spec,
                                                                                 source, named):
    core = client.CoreV1Api(api_client)

    message = create_refused(core.create_namespaced_pod, governed, pod(f"pinned-{how}", **spec))

    assert (f"{source}Pod {governed}/pinned-{how} breaks PodOutsideRegions: {named}; the allowed regions of stack "
            f"{governed}/citizen (QA) are me-central-1") in message
    assert core.list_namespaced_pod(governed).items == []


def test_a_plain_pod_gets_the_region_affinity_and_runs_in_the_region(governed, api_client):
    core = client.CoreV1Api(api_client)

    created = core.create_namespaced_pod(governed, pod("plain"))

    assert api_client.sanitize_for_serialization(created.spec.affinity) == REGION_AFFINITY
    node = wait_until(lambda: core.read_namespaced_pod("plain", governed).spec.node_name, timeout=WAIT,
                      message="pod plain scheduled")
    assert core.read_node(node).metadata.labels[REGION] == "me-central-1"


def test_each_affinity_term_that_could_land_outside_gets_the_region_and_the_rest_is_kept(governed, api_client):
    terms = [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
             {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["cpu-mec1-0"]}]},
             {"matchExpressions": [{"key": REGION, "operator": "In", "values": ["me-central-1"]}]}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                      "labelSelector": {"matchLabels": {"app": "x"}}}}]}}

    created = client.CoreV1Api(api_client).create_namespaced_pod(governed, pod("terms", affinity=affinity),
                                                                 dry_run="All")

    pinned = {"key": REGION, "operator": "In", "values": ["me-central-1"]}
    got = api_client.sanitize_for_serialization(created.spec.affinity)
    assert got["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "gpu", "operator": "Exists"}, pinned]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["cpu-mec1-0"]}],
         "matchExpressions": [pinned]},
        terms[2]]
    assert got["podAntiAffinity"] == affinity["podAntiAffinity"]


def test_a_pod_already_pinned_inside_is_left_as_written(governed, api_client):
    created = client.CoreV1Api(api_client).create_namespaced_pod(
        governed, pod("pinned", nodeSelector={REGION: "me-central-1"}), dry_run="All")

    assert created.spec.affinity is None


@pytest.mark.parametrize("spec, rule", [
    ({"type": "LoadBalancer", "ports": [{"port": 443}]}, "LoadBalancerNotAllowed"),
    ({"externalIPs": ["203.0.113.7"], "ports": [{"port": 443}]}, "ExternalIPsNotAllowed"),
    ({"type": "ExternalName", "externalName": "api.example.com"}, "ExternalNameNotAllowed"),
])
def test_services_that_open_the_namespace_are_denied(governed, api_client, spec, rule):
    core = client.CoreV1Api(api_client)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "exposed"}, "spec": spec}

    message = create_refused(core.create_namespaced_service, governed, service)

    assert f"Service {governed}/exposed breaks {rule}: " in message
    assert "the allowed regions of stack" in message and "are me-central-1" in message


def test_a_load_balancer_the_stack_allows_is_admitted(operator, api_client, namespace):
    make_stack(api_client, namespace, exposure={"allowLoadBalancer": True})
    core = client.CoreV1Api(api_client)
    wait_governed(api_client, namespace)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "public"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}

    assert core.create_namespaced_service(namespace, service).spec.type == "LoadBalancer"


@pytest.fixture
def storage_class(api_client) -> Iterator[str]:
    """A StorageClass whose volumes may be made in eu-west-1 as well as in me-central-1."""
    storage = client.StorageV1Api(api_client)
    name = f"spread-{uuid.uuid4().hex[:6]}"
    storage.create_storage_class({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
        "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer",
        "allowedTopologies": [{"matchLabelExpressions": [
            {"key": "topology.kubernetes.io/zone", "values": ["me-central-1a", "eu-west-1a"]}]}]})
    yield name
    storage.delete_storage_class(name)


def test_a_claim_whose_class_allows_zones_outside_is_denied(governed, api_client, storage_class):
    core = client.CoreV1Api(api_client)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"storageClassName": storage_class, "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}

    message = wait_until(lambda: create_refused(core.create_namespaced_persistent_volume_claim, governed, claim),
                         timeout=WAIT, message="the new StorageClass in the operator's index")

    assert (f"PersistentVolumeClaim {governed}/data breaks StorageClassOutsideRegions: StorageClass "
            f"{storage_class} allows volumes in eu-west-1 (allowedTopologies); the allowed regions of stack "
            f"{governed}/citizen (QA) are me-central-1") in message


def test_a_namespace_without_a_stack_is_untouched(operator, api_client, namespace):
    core = client.CoreV1Api(api_client)

    created = core.create_namespaced_pod(namespace, pod("free", nodeSelector={REGION: "eu-west-1"}))

    assert created.spec.affinity is None
    node = wait_until(lambda: core.read_namespaced_pod("free", namespace).spec.node_name, timeout=WAIT,
                      message="pod free scheduled")
    assert core.read_node(node).metadata.labels[REGION] == "eu-west-1"


def test_a_stack_whose_pool_selects_nodes_outside_its_regions_is_denied(operator, api_client, namespace):
    custom = client.CustomObjectsApi(api_client)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack", "metadata": {"name": "stray"},
            "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"]},
                     "nodePools": [{"name": "eu", "provisioner": "Existing",
                                    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8},
                                    "existing": {"nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"}}}]}}

    message = create_refused(lambda ns, b: custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, b),
                             namespace, body)

    assert (f"SovereignStack {namespace}/stray breaks NodePoolOutsideRegions: nodePools eu existing.nodeSelector "
            "topology.kubernetes.io/zone=eu-west-1a selects nodes in eu-west-1") in message


def violations_metric(namespace: str, kind: str) -> float | None:
    return RESIDENCY_VIOLATIONS.labels(stack="citizen", namespace=namespace, kind=kind)._value.get()


def events_of(api_client, namespace: str, reason: str) -> list:
    return [e for e in client.CoreV1Api(api_client).list_namespaced_event(namespace).items
            if e.reason == reason and e.involved_object.kind == "SovereignStack"]


def test_audit_mode_admits_a_pod_outside_records_it_and_clears_it_when_deleted(operator, api_client, namespace,
                                                                             cluster):
    make_stack(api_client, namespace, enforcement="Audit")
    core = client.CoreV1Api(api_client)
    wait_governed(api_client, namespace)
    wait_until(lambda: (read_stack(api_client, namespace).get("status") or {}).get("conditions"), timeout=WAIT,
               message="first audit")

    created = cluster.kubectl("-n", namespace, "create", "-f", "-", input=(
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "abroad"}, "spec": {"nodeSelector": '
        '{"topology.kubernetes.io/region": "eu-west-1"}, "containers": [{"name": "app", "image": "app:1"}]}}'))

    assert created.returncode == 0, created.stderr
    assert ("Warning: Validation failed for ValidatingAdmissionPolicy 'sovereign-residency-workloads' with binding "
            f"'sovereign-residency-workloads-audit': Pod {namespace}/abroad breaks PodOutsideRegions") in created.stderr
    status = wait_until(lambda: _status_with_violations(api_client, namespace), timeout=WAIT,
                        message="the violation in status")
    violation, = status["violations"]
    assert (violation["kind"], violation["namespace"], violation["name"], violation["rule"]) == (
        "Pod", namespace, "abroad", "PodOutsideRegions")
    assert status["violationCount"] == 1
    condition = next(c for c in status["conditions"] if c["type"] == "ResidencyCompliant")
    assert (condition["status"], condition["reason"]) == ("False", "PodOutsideRegions")
    assert f"Pod {namespace}/abroad breaks PodOutsideRegions" in condition["message"]
    assert wait_until(lambda: events_of(api_client, namespace, "PodOutsideRegions"), timeout=WAIT,
                      message="a Warning Event")[0].type == "Warning"
    assert violations_metric(namespace, "Pod") == 1

    core.delete_namespaced_pod("abroad", namespace, grace_period_seconds=0)

    wait_until(lambda: _compliant(api_client, namespace), timeout=WAIT, message="the violation cleared")
    assert read_stack(api_client, namespace)["status"]["violations"] == []
    assert violations_metric(namespace, "Pod") == 0
    assert events_of(api_client, namespace, "ViolationsCleared")


def _status_with_violations(api_client, namespace: str) -> dict | None:
    status = read_stack(api_client, namespace).get("status") or {}
    return status if status.get("violations") else None


def _compliant(api_client, namespace: str) -> bool:
    status = read_stack(api_client, namespace).get("status") or {}
    return any(c["type"] == "ResidencyCompliant" and c["status"] == "True" for c in status.get("conditions") or [])


def test_an_unchanged_namespace_costs_no_status_writes(operator, api_client, namespace, cluster):
    make_stack(api_client, namespace)
    wait_until(lambda: _compliant(api_client, namespace), timeout=WAIT, message="first audit")
    version = read_stack(api_client, namespace)["metadata"]["resourceVersion"]

    # Several audit periods pass.
    audits_before = _audit_writes(cluster, namespace)
    threading.Event().wait(AUDIT_SECONDS * 4)

    assert read_stack(api_client, namespace)["metadata"]["resourceVersion"] == version
    assert _audit_writes(cluster, namespace) == audits_before


def _audit_writes(cluster, namespace: str) -> int:
    """Writes to the namespace's stacks, and to the namespace itself (labels, residency parameters)."""
    return sum(1 for e in cluster.audit_events()
               if ((e.get("objectRef") or {}).get("namespace") == namespace
                   and (e.get("objectRef") or {}).get("resource") == "sovereignstacks"
                   or (e.get("objectRef") or {}).get("resource") == "namespaces"
                   and (e.get("objectRef") or {}).get("name") == namespace)
               and e.get("verb") in ("patch", "update", "create", "delete"))


def test_the_governed_label_goes_with_the_last_stack(operator, api_client, namespace):
    make_stack(api_client, namespace, name="first")
    make_stack(api_client, namespace, name="second")
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    wait_governed(api_client, namespace)

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "first")
    wait_until(lambda: not _exists(custom, namespace, "first"), timeout=WAIT, message="stack first gone")
    assert (core.read_namespace(namespace).metadata.labels or {}).get(GOVERNED_LABEL) == "true"
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "second")

    wait_until(lambda: GOVERNED_LABEL not in (core.read_namespace(namespace).metadata.labels or {}),
               timeout=WAIT, message="governed label removed")
    left = core.read_namespace(namespace).metadata
    assert ENFORCEMENT_LABEL not in (left.labels or {})
    assert not [key for key in (left.annotations or {}) if key.startswith("sovereign.ai/residency-")]


def _exists(custom, namespace: str, name: str) -> bool:
    try:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def test_lookup_decisions_are_counted(governed, api_client):
    denied = WEBHOOK_DECISIONS.labels("pod-node", "Pod", "denied", "PodOutsideRegions")
    before = denied._value.get()

    create_refused(client.CoreV1Api(api_client).create_namespaced_pod, governed,
                   pod("counted", nodeName="cpu-euw1-0"))

    assert denied._value.get() == before + 1


@pytest.fixture
def volume_abroad(api_client) -> Iterator[str]:
    """A pre-provisioned local PersistentVolume on a node of eu-west-1."""
    core = client.CoreV1Api(api_client)
    name = f"pv-euw1-{uuid.uuid4().hex[:6]}"
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": "/mnt/disks/ssd1"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]}]}]}}}})
    yield name
    core.delete_persistent_volume(name)


def claim_for(volume: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "records"},
            "spec": {"storageClassName": "", "volumeName": volume, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}


def test_a_claim_for_a_volume_outside_the_regions_is_denied(governed, api_client, volume_abroad):
    message = create_refused(client.CoreV1Api(api_client).create_namespaced_persistent_volume_claim, governed,
                             claim_for(volume_abroad))

    assert (f"PersistentVolumeClaim {governed}/records breaks VolumeOutsideRegions: PersistentVolume "
            f"{volume_abroad} is in eu-west-1; the allowed regions of stack {governed}/citizen (QA) are "
            "me-central-1") in message


def test_the_audit_records_a_claim_bound_to_a_volume_outside(operator, api_client, namespace, volume_abroad):
    make_stack(api_client, namespace, enforcement="Audit")
    wait_governed(api_client, namespace)

    client.CoreV1Api(api_client).create_namespaced_persistent_volume_claim(namespace, claim_for(volume_abroad))

    status = wait_until(lambda: _status_with_violations(api_client, namespace), timeout=WAIT,
                        message="the violation in status")
    violation, = status["violations"]
    assert (violation["kind"], violation["name"], violation["rule"]) == (
        "PersistentVolumeClaim", "records", "VolumeOutsideRegions")
    assert violations_metric(namespace, "PersistentVolumeClaim") == 1


def _as_someone_else(api_client) -> client.ApiClient:
    """A client that acts as user alice with every right (system:masters): not the operator."""
    other = client.ApiClient(api_client.configuration)
    other.set_default_header("Impersonate-User", "alice")
    other.set_default_header("Impersonate-Group", "system:masters")
    return other


@pytest.mark.parametrize("change, named", [
    ({"labels": {GOVERNED_LABEL: None}}, GOVERNED_LABEL),
    ({"labels": {ENFORCEMENT_LABEL: "Audit"}}, ENFORCEMENT_LABEL),
    ({"annotations": {"sovereign.ai/residency-regions": "me-central-1,eu-west-1"}}, "sovereign.ai/residency-regions"),
])
def test_only_the_operator_may_lift_or_loosen_a_namespaces_governance(governed, api_client, change, named):
    other = _as_someone_else(api_client)
    try:
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(other).patch_namespace(governed, {"metadata": change})
        assert refused.value.status == 403
        assert (f"Namespace {governed} breaks GovernanceTampered: {named} belong to the sovereign operator: it sets "
                "them while a SovereignStack governs the namespace") in refused.value.body
        # Other labels are the namespace owner's, as before.
        client.CoreV1Api(other).patch_namespace(governed, {"metadata": {"labels": {"team": "citizen"}}})
    finally:
        other.close()
    create_refused(client.CoreV1Api(api_client).create_namespaced_pod, governed,
                   pod("still-governed", nodeSelector={REGION: "eu-west-1"}))
