"""Eleven ways to put a workload or data outside the allowed regions, each tried in both modes.

Enforce: the real kube-apiserver calls the operator's webhooks and refuses the object, with a
message naming the object, the rule and the allowed regions. Audit: the object is admitted, and
within an audit period it is in ``status.violations`` with the same rule. One test per attempt
and mode; the stack allows me-central-1 only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from residency_helpers import WAIT, make_stack, operator, read_stack, wait_governed  # noqa: F401 - fixture

from sovereign_dev.cluster import wait_until

REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
ALLOWED = "me-central-1"


@dataclass(frozen=True)
class Attempt:
    id: str
    kind: str
    rule: str
    body: Callable[[dict[str, str]], dict[str, Any]]  # cluster objects made for the test -> manifest


def _pod(**spec: Any) -> Callable[[dict[str, str]], dict[str, Any]]:
    return lambda _: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "abroad"},
                      "spec": {"containers": [{"name": "app", "image": "registry.gov.qa/app:1"}], **spec}}


def _service(**spec: Any) -> Callable[[dict[str, str]], dict[str, Any]]:
    return lambda _: {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "exposed"},
                      "spec": {"selector": {"app": "x"}, **spec}}


def _claim(**spec: Any) -> Callable[[dict[str, str]], dict[str, Any]]:
    def body(made: dict[str, str]) -> dict[str, Any]:
        filled = {key: made[value] if isinstance(value, str) and value in made else value
                  for key, value in spec.items()}
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                         **filled}}
    return body


def _affinity(key: str, value: str) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}]}}}


ATTEMPTS = [
    Attempt("pod-node-selector-region", "Pod", "PodOutsideRegions", _pod(nodeSelector={REGION: "eu-west-1"})),
    Attempt("pod-node-selector-zone", "Pod", "PodOutsideRegions", _pod(nodeSelector={ZONE: "eu-west-1a"})),
    Attempt("pod-node-selector-hostname", "Pod", "PodOutsideRegions",
            _pod(nodeSelector={"kubernetes.io/hostname": "cpu-euw1-0"})),
    Attempt("pod-node-name", "Pod", "PodOutsideRegions", _pod(nodeName="cpu-euw1-0")),
    Attempt("pod-affinity-region", "Pod", "PodOutsideRegions", _pod(affinity=_affinity(REGION, "eu-west-1"))),
    Attempt("pod-affinity-zone", "Pod", "PodOutsideRegions", _pod(affinity=_affinity(ZONE, "eu-west-1b"))),
    Attempt("service-load-balancer", "Service", "LoadBalancerNotAllowed",
            _service(type="LoadBalancer", ports=[{"port": 443}])),
    Attempt("service-node-port", "Service", "NodePortNotAllowed", _service(type="NodePort", ports=[{"port": 443}])),
    Attempt("service-external-ips", "Service", "ExternalIPsNotAllowed",
            _service(externalIPs=["203.0.113.7"], ports=[{"port": 443}])),
    Attempt("claim-storage-class-outside", "PersistentVolumeClaim", "StorageClassOutsideRegions",
            _claim(storageClassName="storage_class")),
    Attempt("claim-volume-outside", "PersistentVolumeClaim", "VolumeOutsideRegions",
            _claim(storageClassName="", volumeName="volume")),
]


@pytest.fixture(scope="module")
def storage_class(api_client) -> Iterator[str]:
    """A class whose volumes may be made in eu-west-1; module-scoped so the operator's index
    has long seen it when a claim names it."""
    storage = client.StorageV1Api(api_client)
    name = f"abroad-{uuid.uuid4().hex[:6]}"
    storage.create_storage_class({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
        "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer",
        "allowedTopologies": [{"matchLabelExpressions": [{"key": ZONE, "values": ["eu-west-1a"]}]}]})
    yield name
    storage.delete_storage_class(name)


@pytest.fixture
def made(api_client, storage_class) -> Iterator[dict[str, str]]:
    """A pre-provisioned volume in eu-west-1 (one per test: a claim binds it for good)."""
    core = client.CoreV1Api(api_client)
    volume = f"pv-abroad-{uuid.uuid4().hex[:6]}"
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": "/mnt/disks/ssd1"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": ZONE, "operator": "In", "values": ["eu-west-1a"]}]}]}}}})
    yield {"storage_class": storage_class, "volume": volume}
    core.delete_persistent_volume(volume)


def _create(api_client, namespace: str, body: dict[str, Any]) -> None:
    core = client.CoreV1Api(api_client)
    create = {"Pod": core.create_namespaced_pod, "Service": core.create_namespaced_service,
              "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim}[body["kind"]]
    create(namespace, body)


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.id for a in ATTEMPTS])
def test_enforce_denies_the_attempt_naming_object_rule_and_regions(operator, api_client, namespace, made,  # noqa: F811
                                                                    attempt):
    make_stack(api_client, namespace, enforcement="Enforce")
    wait_governed(api_client, namespace)
    body = attempt.body(made)

    with pytest.raises(ApiException) as refused:
        _create(api_client, namespace, body)

    assert refused.value.status in (400, 403), refused.value.body
    message = refused.value.body
    assert f"{attempt.kind} {namespace}/{body['metadata']['name']} breaks {attempt.rule}" in message
    assert ALLOWED in message


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.id for a in ATTEMPTS])
def test_audit_admits_the_attempt_and_records_it_as_a_violation(operator, api_client, namespace, made,  # noqa: F811
                                                                 attempt):
    make_stack(api_client, namespace, enforcement="Audit")
    wait_governed(api_client, namespace)
    wait_until(lambda: (read_stack(api_client, namespace).get("status") or {}).get("conditions"), timeout=WAIT,
               message="the first audit")
    body = attempt.body(made)

    _create(api_client, namespace, body)

    def recorded() -> dict[str, Any] | None:
        violations = (read_stack(api_client, namespace).get("status") or {}).get("violations") or []
        return next((v for v in violations if (v["kind"], v["name"]) == (attempt.kind, body["metadata"]["name"])),
                    None)

    violation = wait_until(recorded, timeout=WAIT, message=f"{attempt.kind} {body['metadata']['name']} in "
                                                           "status.violations")
    assert violation["rule"] == attempt.rule
    assert violation["namespace"] == namespace
