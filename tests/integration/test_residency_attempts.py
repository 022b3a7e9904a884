"""Every way tried to put a workload, its traffic or its data outside the allowed regions, in both modes.

Enforce: the real kube-apiserver refuses the object, by the residency admission policies it
evaluates itself or by the operator's lookup webhook, with a message naming the object, the rule
and the allowed regions; a workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)
is refused itself, not only its pods. Audit: the object is admitted with the same text as a
warning, and a pod, Service or claim is in ``status.violations`` with the same rule within an
audit period. One test per attempt and mode; the stack allows me-central-1 only. Also here: a pod
bound to a node outside through the ``binding`` subresource, and the apiserver's audit log
recording what Audit mode let through.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
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


def _workload(kind: str) -> Callable[[dict[str, str]], dict[str, Any]]:
    """A ``kind`` whose pod template asks for eu-west-1."""
    template = {"metadata": {"labels": {"app": "abroad"}},
                "spec": {"nodeSelector": {REGION: "eu-west-1"}, "restartPolicy": "Always" if kind not in (
                    "Job", "CronJob") else "Never", "containers": [{"name": "app", "image": "registry.gov.qa/app:1"}]}}
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "abroad"}}, "template": template}
    if kind == "StatefulSet":
        spec["serviceName"] = "abroad"
    if kind == "Job":
        spec = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": template}}}
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return lambda _: {"apiVersion": group, "kind": kind, "metadata": {"name": "abroad"}, "spec": spec}


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
    Attempt("pod-host-network", "Pod", "HostNamespacesNotAllowed", _pod(hostNetwork=True)),
    Attempt("pod-host-pid", "Pod", "HostNamespacesNotAllowed", _pod(hostPID=True)),
    Attempt("pod-host-ipc", "Pod", "HostNamespacesNotAllowed", _pod(hostIPC=True)),
    Attempt("service-external-name", "Service", "ExternalNameNotAllowed",
            _service(type="ExternalName", externalName="api.example.com")),
    *(Attempt(f"workload-{kind.lower()}", kind, "PodOutsideRegions", _workload(kind))
      for kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")),
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


_PLURALS = {"Pod": "pods", "Service": "services", "PersistentVolumeClaim": "persistentvolumeclaims",
            "Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
            "ReplicaSet": "replicasets", "Job": "jobs", "CronJob": "cronjobs"}


def _create(api_client, namespace: str, body: dict[str, Any], *,
            path: str | None = None) -> tuple[int, str, list[str]]:
    """POST ``body`` (to ``path``, default its kind's collection): the status, the answer and the
    warnings the apiserver sent with it."""
    version = body["apiVersion"]
    base = f"/apis/{version}" if "/" in version else f"/api/{version}"
    path = path or f"{base}/namespaces/{namespace}/{_PLURALS[body['kind']]}"
    method, url, headers, data, _ = api_client.param_serialize(
        "POST", path, header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body, auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, header_params=headers, body=data)
    warnings = response.headers.getlist("Warning") if hasattr(response.headers, "getlist") else [
        response.headers.get("Warning", "")]
    return response.status, response.read().decode(), [w for w in warnings if w]


def _stated(attempt: Attempt, namespace: str, body: dict[str, Any]) -> str:
    return f"{attempt.kind} {namespace}/{body['metadata']['name']} breaks {attempt.rule}"


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.id for a in ATTEMPTS])
def test_enforce_denies_the_attempt_naming_object_rule_and_regions(operator, api_client, namespace, made,  # noqa: F811
                                                                    attempt):
    make_stack(api_client, namespace, enforcement="Enforce")
    wait_governed(api_client, namespace)
    body = attempt.body(made)

    status, answer, _ = _create(api_client, namespace, body)

    assert status == 403, answer
    message = json.loads(answer)["message"]
    assert _stated(attempt, namespace, body) in message
    assert f"the allowed regions of stack {namespace}/citizen (QA) are {ALLOWED}" in message


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.id for a in ATTEMPTS])
def test_audit_admits_the_attempt_and_reports_what_enforce_would_deny(operator, api_client, namespace,  # noqa: F811
                                                                      made, attempt):
    make_stack(api_client, namespace, enforcement="Audit")
    wait_governed(api_client, namespace)
    wait_until(lambda: (read_stack(api_client, namespace).get("status") or {}).get("conditions"), timeout=WAIT,
               message="the first audit")
    body = attempt.body(made)

    status, answer, warnings = _create(api_client, namespace, body)

    assert status == 201, answer
    assert any(_stated(attempt, namespace, body) in warning for warning in warnings), warnings
    if attempt.kind not in ("Pod", "Service", "PersistentVolumeClaim"):
        return  # a workload's pods are what the audit finds running, each under its own name

    def recorded() -> dict[str, Any] | None:
        violations = (read_stack(api_client, namespace).get("status") or {}).get("violations") or []
        return next((v for v in violations if (v["kind"], v["name"]) == (attempt.kind, body["metadata"]["name"])),
                    None)

    violation = wait_until(recorded, timeout=WAIT, message=f"{attempt.kind} {body['metadata']['name']} in "
                                                           "status.violations")
    assert violation["rule"] == attempt.rule
    assert violation["namespace"] == namespace


def test_the_apiservers_audit_log_records_what_audit_mode_admitted(operator, api_client, namespace,  # noqa: F811
                                                                   cluster):
    make_stack(api_client, namespace, enforcement="Audit")
    wait_governed(api_client, namespace)
    body = _workload("Deployment")(None)

    assert _create(api_client, namespace, body)[0] == 201

    def annotated() -> dict[str, str] | None:
        return next((e.get("annotations") for e in cluster.audit_events()
                     if (e.get("objectRef") or {}).get("namespace") == namespace
                     and (e.get("objectRef") or {}).get("resource") == "deployments" and e.get("verb") == "create"
                     and "validation.policy.admission.k8s.io/validation_failure" in (e.get("annotations") or {})),
                    None)

    annotations = wait_until(annotated, timeout=WAIT, message="the audit annotation of the Deployment")
    failure, = json.loads(annotations["validation.policy.admission.k8s.io/validation_failure"])
    assert failure["policy"] == "sovereign-residency-workloads"
    assert failure["binding"] == "sovereign-residency-workloads-audit"
    assert f"Deployment {namespace}/abroad breaks PodOutsideRegions" in failure["message"]


@pytest.mark.parametrize("enforcement", ["Enforce", "Audit"])
def test_a_pod_bound_to_a_node_outside_through_the_binding_subresource(operator, api_client, namespace,  # noqa: F811
                                                                       enforcement):
    make_stack(api_client, namespace, enforcement=enforcement)
    wait_governed(api_client, namespace)
    # No scheduler picks it: a person with the right to bind places it by hand.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "placed"},
           "spec": {"schedulerName": "nobody", "containers": [{"name": "app", "image": "registry.gov.qa/app:1"}]}}
    client.CoreV1Api(api_client).create_namespaced_pod(namespace, pod)
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "placed", "namespace": namespace},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "cpu-euw1-0"}}

    status, answer, warnings = _create(api_client, namespace, binding,
                                       path=f"/api/v1/namespaces/{namespace}/pods/placed/binding")

    stated = (f"Pod {namespace}/placed breaks PodOutsideRegions: it runs on node cpu-euw1-0 in eu-west-1; the "
              f"allowed regions of stack {namespace}/citizen (QA) are {ALLOWED}")
    node = client.CoreV1Api(api_client).read_namespaced_pod("placed", namespace).spec.node_name
    if enforcement == "Enforce":
        assert status == 403, answer
        assert 'admission webhook "pod-binding.sovereign.ai" denied the request: ' + stated in json.loads(
            answer)["message"]
        assert node is None
    else:
        assert status == 201, answer
        assert any(stated in warning for warning in warnings), warnings
        assert node == "cpu-euw1-0"
