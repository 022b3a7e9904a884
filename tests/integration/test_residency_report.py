"""``sovereign report`` from a real cluster state: a stack in Audit mode with a pod and a bucket
outside its region (recorded by the running audit), a pod and a claim inside, the residency
admission policies and the operator's lookup webhooks in force; the report is made by the CLI, as an auditor would run it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from kubernetes import client
from residency_helpers import WAIT, make_stack, operator, read_stack, wait_governed
from sovereign_dev.cluster import wait_until
from sovereign.stores.credentials import Credentials
from sovereign.stores.s3 import S3Store

__all__ = ["operator"]  # a fixture, used by name
pytestmark = pytest.mark.minio
REGION = "topology.kubernetes.io/region"


@pytest.fixture
def audited_state(operator, api_client, namespace, minio_servers, minio_bucket_name) -> str:
    """A namespace in the state described above, once the audit has recorded both violations."""
    eu = minio_servers["eu-west-1"]
    S3Store(endpoint=eu.endpoint, region=eu.region, path_style=True,
            credentials=Credentials(access_key_id=eu.access_key, secret_access_key=eu.secret_key)).create_bucket(
        bucket=minio_bucket_name, region="eu-west-1", encryption=True, versioning=False)
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "data": {
        "AWS_ACCESS_KEY_ID": base64.b64encode(eu.access_key.encode()).decode(),
        "AWS_SECRET_ACCESS_KEY": base64.b64encode(eu.secret_key.encode()).decode()}})
    make_stack(api_client, namespace, enforcement="Audit", spec={"dataStores": [{"name": "corpus", "s3": {
        "bucket": minio_bucket_name, "region": "me-central-1", "endpoint": eu.endpoint, "forcePathStyle": True,
        "credentialsSecretRef": {"name": "s3-creds"}}}]})
    wait_governed(api_client, namespace)
    container = [{"name": "app", "image": "registry.gov.qa/app:1"}]
    core.create_namespaced_pod(namespace, {"metadata": {"name": "home"}, "spec": {"containers": container}})
    core.create_namespaced_pod(namespace, {"metadata": {"name": "abroad"},
                                           "spec": {"containers": container, "nodeSelector": {REGION: "eu-west-1"}}})
    core.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": "scratch"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "not-installed"}})

    def recorded() -> bool:
        violations = (read_stack(api_client, namespace).get("status") or {}).get("violations") or []
        return {(v["kind"], v["name"]) for v in violations} == {("Pod", "abroad"), ("DataStore", "corpus")}

    wait_until(recorded, timeout=WAIT, message="both violations recorded by the audit")
    return namespace


def report(cluster, namespace: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sovereign", "report", "citizen", "-n", namespace, *args],
                          check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": cluster.kubeconfig})


def test_the_json_report_holds_the_evidence(cluster, audited_state, minio_bucket_name, tmp_path):
    namespace = audited_state
    out = tmp_path / "residency.json"

    done = report(cluster, namespace, "-o", str(out))

    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"wrote {out} (json): {namespace}/citizen is 2 violation(s)"
    evidence = json.loads(out.read_text())
    assert evidence["stack"] | {"uid": "-"} == {
        "name": "citizen", "namespace": namespace, "uid": "-", "generation": 1, "jurisdiction": "QA",
        "regions": ["me-central-1"], "enforcement": "Audit", "allowLoadBalancer": False, "allowNodePort": False,
        "egressCIDRs": []}
    assert evidence["compliant"] is False
    pods = {p["name"]: p for p in evidence["pods"]}
    assert (pods["home"]["region"], pods["home"]["check"]["ok"]) == ("me-central-1", True)
    assert (pods["abroad"]["region"], pods["abroad"]["check"]["reason"]) == ("eu-west-1", "PodOutsideRegions")
    assert pods["abroad"]["node"] == "cpu-euw1-0"
    volume, = evidence["volumes"]
    assert (volume["claim"], volume["storageClass"], volume["check"]["ok"]) == ("scratch", "not-installed", True)
    store, = evidence["stores"]
    assert (store["bucket"], store["declaredRegion"], store["observedRegion"], store["summary"]["reason"]) == (
        minio_bucket_name, "me-central-1", "eu-west-1", "LocationOutsideRegions")
    assert store["checks"]["Encryption"]["reason"] == "EncryptionOn"
    assert {(v["kind"], v["name"], v["rule"]) for v in evidence["violations"]} == {
        ("Pod", "abroad", "PodOutsideRegions"), ("DataStore", "corpus", "LocationOutsideRegions")}
    assert all(v["since"].endswith("Z") for v in evidence["violations"])
    admission = evidence["admission"]
    assert admission["namespaceGoverned"] is True
    assert admission["enforcement"] == "Audit"
    assert admission["parameters"]["sovereign.ai/residency-regions"] == "me-central-1"
    # The policies guarding an Audit namespace: the mutation, the Audit bindings, the governance.
    guarding = {(p["name"], p["binding"]): p for p in admission["policies"]}
    assert set(guarding) == {
        ("sovereign-residency-region-affinity", "sovereign-residency-region-affinity"),
        ("sovereign-residency-workloads", "sovereign-residency-workloads-audit"),
        ("sovereign-residency-services", "sovereign-residency-services-audit"),
        ("sovereign-residency-governance", "sovereign-residency-governance")}
    workloads = guarding["sovereign-residency-workloads", "sovereign-residency-workloads-audit"]
    assert workloads["actions"] == ["Warn", "Audit"]
    assert {"pods", "deployments", "cronjobs"} <= set(workloads["resources"])
    hooks = {w["name"]: w for w in admission["webhooks"]}
    assert hooks["pod-node.sovereign.ai"]["namespaceSelector"] == "sovereign.ai/governed=true"
    assert hooks["pod-node.sovereign.ai"]["failurePolicy"] == "Fail"
    assert hooks["claim-residency.sovereign.ai"]["endpoint"].endswith("/claim-residency")
    assert {c["type"]: c["status"] for c in evidence["conditions"]}["ResidencyCompliant"] == "False"


def test_the_html_report_is_one_page_an_auditor_can_read(cluster, audited_state, minio_bucket_name, tmp_path):
    namespace = audited_state
    out = tmp_path / "residency.html"

    done = report(cluster, namespace, "-o", str(out))

    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert f"<title>Residency report: {namespace}/citizen (QA)</title>" in page
    assert "Not compliant: 2 residency violation(s) recorded." in page
    assert f"<td>{namespace}/abroad</td><td><code>PodOutsideRegions</code></td>" in page
    assert "<td>cpu-euw1-0</td><td>eu-west-1</td>" in page
    assert f"<h3>corpus: s3://{minio_bucket_name}</h3>" in page
    assert "<dt>Observed region</dt><dd>eu-west-1</dd>" in page
    assert "<td>pod-node.sovereign.ai</td>" in page
    assert ("<tr><td>ValidatingAdmissionPolicy sovereign-residency-workloads</td>"
            "<td>sovereign-residency-workloads-audit</td>") in page
    assert "Namespace " + namespace + " is governed" in page and "in Audit mode" in page
    # Messages are escaped, not markup: the store check quotes the bucket name.
    assert f"bucket &#39;{minio_bucket_name}&#39; is in eu-west-1" in page
    assert "<script" not in page


def test_a_stack_that_does_not_exist_is_a_clear_error(cluster, operator, namespace):
    done = report(cluster, namespace, "--format", "json")

    assert done.returncode == 1
    assert done.stderr.strip() == (f"SovereignStack {namespace}/citizen does not exist: check the name and "
                                   "-n/--namespace (kubectl get sstack -A)")
