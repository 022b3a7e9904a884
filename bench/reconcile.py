"""Reconcile benchmarks: the full sample from creation to applied and to Ready, and idle writes.

Against a local control plane, with the operator as a real ``sovereign run`` subprocess:

- create the full sample -> every child the operator renders exists; -> ``Ready=True``
  (median of ``RUNS``), next to ``kubectl apply --server-side`` of the same rendered manifests;
- mutating requests the operator makes while the stack sits unchanged for ``IDLE_SECONDS``
  (``SOVEREIGN_BENCH_IDLE_SECONDS`` shortens it; target zero), counted from the apiserver's
  audit log by the operator's user agent.

The parts of a cloud the local cluster lacks are simulated by ``SimulatedCloud``: Karpenter
(NodePools reported Ready, two GPU nodes carrying the NodePool's label), on-premises GPU nodes
labelled for the sample's Existing pool, statically provisioned volumes, and the in-country
bucket (on a real MinIO server) with its credentials Secret. ``OperatorProcess`` runs the operator. The integration tests
(``tests/integration/test_reconcile*.py``) use both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.result import Result
from sovereign.api import GROUP, PLURAL, VERSION, load_documents, parse_stack
from sovereign.devcluster import build
from sovereign.devcluster.cluster import REPO_ROOT, DevCluster, wait_until
from sovereign.devcluster.minio import MinioServer
from sovereign.kube.client import USER_AGENT
from sovereign.render.names import KARPENTER_NODEPOOL_LABEL, OWNER_ANNOTATION, POOL_LABEL, STACK_LABEL, nodepool_name

RUNS = 10
IDLE_SECONDS = float(os.environ.get("SOVEREIGN_BENCH_IDLE_SECONDS", 300))
FULL_SAMPLE = REPO_ROOT / "manifests" / "samples" / "full.yaml"
STACK = "citizen-services"
#: Nodes of the default fleet the simulation gives roles: Karpenter's and the on-premises rack.
KARPENTER_NODES = ("gpu-mec1-0", "gpu-mec1-1")
RACK_NODES = ("gpu-mec1-2", "gpu-mec1-3", "gpu-euw1-0")  # the last is outside me-central-1
RACK_LABEL = "sovereign.ai/rack"
MUTATING = ("create", "update", "patch", "delete", "deletecollection")


def full_sample() -> dict[str, Any]:
    (document,) = load_documents(FULL_SAMPLE.read_text())
    return document


def karpenter_nodepool(namespace: str) -> str:
    """Name of the NodePool the operator makes for the full sample's Karpenter pool in ``namespace``."""
    document = full_sample()
    document["metadata"]["namespace"] = namespace
    return nodepool_name(parse_stack(document), "h100")


class SimulatedCloud:
    """What a real cluster would have around the full sample, in one namespace.

    ``store`` is the in-country object store (a MinIO server of me-central-1): the sample's S3
    store is pointed at a compliant bucket there (``sample()``), with the credentials Secret the
    store names, so the residency audit finds the bucket where the stack says it is.
    """

    def __init__(self, api: client.ApiClient, namespace: str, *, store: MinioServer) -> None:
        self.api = api
        self.namespace = namespace
        self.store = store
        self.bucket = namespace[:63]
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.volume_prefix = f"pv-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._karpenter = threading.Thread(target=self._run_karpenter, name="fake-karpenter", daemon=True)

    def __enter__(self) -> SimulatedCloud:
        s3 = self.store.client()
        s3.create_bucket(Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": self.store.region})
        s3.put_bucket_encryption(Bucket=self.bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        self.core.create_namespaced_secret(self.namespace, {
            "metadata": {"name": "s3-creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": self.store.access_key, "AWS_SECRET_ACCESS_KEY": self.store.secret_key}})
        for node in RACK_NODES:
            self._label(node, {RACK_LABEL: "doha-1"})
        self.add_volumes(regional=8, unclassed=4)
        self._karpenter.start()
        return self

    def sample(self) -> dict[str, Any]:
        """The full sample, its S3 store pointed at this cloud's bucket."""
        document = full_sample()
        corpus = next(s for s in document["spec"]["dataStores"] if s["name"] == "corpus")
        corpus["s3"] |= {"bucket": self.bucket, "endpoint": self.store.endpoint, "region": self.store.region,
                         "forcePathStyle": True}
        return document

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._karpenter.join(timeout=10)
        # Also whatever a stack that was never finalized left behind, so the next run starts clean.
        for node in (*KARPENTER_NODES, *RACK_NODES):
            self.core.patch_node(node, {"metadata": {
                "labels": {RACK_LABEL: None, KARPENTER_NODEPOOL_LABEL: None, POOL_LABEL: None, STACK_LABEL: None},
                "annotations": {OWNER_ANNOTATION: None}}})
        for volume in self.core.list_persistent_volume().items:
            if volume.metadata.name.startswith(self.volume_prefix):
                self.core.delete_persistent_volume(volume.metadata.name)

    def add_volumes(self, *, regional: int, unclassed: int) -> None:
        """Statically provisioned volumes in me-central-1, as a regional storage class would make:
        ``regional`` of class regional-ssd, ``unclassed`` for claims that name no class."""
        existing = len([v for v in self.core.list_persistent_volume().items
                        if v.metadata.name.startswith(self.volume_prefix)])
        for index in range(existing, existing + regional + unclassed):
            spec: dict[str, Any] = {
                "capacity": {"storage": "1Ti"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/var/lib/sovereign-bench/{self.volume_prefix}-{index}"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]}]}]}},
            }
            if index - existing < regional:
                spec["storageClassName"] = "regional-ssd"
            self.core.create_persistent_volume({"metadata": {"name": f"{self.volume_prefix}-{index}"}, "spec": spec})

    def _label(self, node: str, labels: dict[str, str | None]) -> None:
        self.core.patch_node(node, {"metadata": {"labels": labels}})

    def _run_karpenter(self) -> None:
        """Karpenter's part: each NodePool of the namespace's stacks gets nodes and is reported Ready."""
        while not self._stop.wait(0.2):
            try:
                pools = self.custom.list_cluster_custom_object("karpenter.sh", "v1", "nodepools",
                                                               label_selector=STACK_LABEL)["items"]
            except client.ApiException:
                continue
            for pool in pools:
                owner = (pool["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION, "")
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (pool.get("status") or {}).get("conditions") or [])
                if owner.startswith(f"{self.namespace}/") and not ready:
                    self._launch(pool["metadata"]["name"])

    def _launch(self, nodepool: str) -> None:
        for node in KARPENTER_NODES:
            self._label(node, {KARPENTER_NODEPOOL_LABEL: nodepool})
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.custom.patch_cluster_custom_object_status("karpenter.sh", "v1", "nodepools", nodepool, {
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                                       "lastTransitionTime": now}]}})


class OperatorProcess:
    """``sovereign run`` as a subprocess against a cluster, logging to a file."""

    def __init__(self, *, kubeconfig: str, namespaces: list[str], log: Path, resync_seconds: float = 3) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log = log
        self.resync_seconds = resync_seconds
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        # No admission webhooks: their configurations would outlive this process in a shared
        # cluster (they fail closed); the residency audit runs, as often as the resync.
        args = [sys.executable, "-m", "sovereign", "run", "--standalone", "--verbose", "--no-webhooks",
                "--resync-seconds", str(self.resync_seconds), "--audit-seconds", str(self.resync_seconds)]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "KUBECONFIG": self.kubeconfig},
                                            start_new_session=True)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def operator_writes(cluster: DevCluster, *, after: int = 0) -> list[dict[str, Any]]:
    """Mutating requests the operator made, from the audit log's entry ``after`` on."""
    return [event for event in cluster.audit_events()[after:]
            if event.get("userAgent", "").startswith(USER_AGENT.split("/")[0] + "/")
            and event.get("verb") in MUTATING and event.get("stage", "ResponseComplete") == "ResponseComplete"]


def stack_conditions(api: client.ApiClient, namespace: str, name: str = STACK) -> dict[str, dict[str, Any]]:
    stack = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return {c["type"]: c for c in (stack.get("status") or {}).get("conditions") or []}


def is_ready(api: client.ApiClient, namespace: str, name: str = STACK) -> bool:
    return stack_conditions(api, namespace, name).get("Ready", {}).get("status") == "True"


def delete_stack(api: client.ApiClient, namespace: str, name: str = STACK, *, timeout: float = 120) -> None:
    """Delete the stack and wait until the operator has finalized it."""
    custom = client.CustomObjectsApi(api)
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except client.ApiException as err:
        if err.status != 404:
            raise

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_until(gone, timeout=timeout, message=f"stack {namespace}/{name} to be finalized and deleted")


# --- the benchmark --------------------------------------------------------------------------------


def run() -> list[Result]:
    build.ensure_all(["etcd", "kubernetes", "kwok", "minio"])
    applied = Result("create full sample -> all children applied (operator)", "s")
    ready = Result("create full sample -> Ready=True (operator)", "s")
    kubectl = Result("kubectl apply --server-side of the same manifests", "s")
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp, \
            DevCluster(workdir=Path(tmp) / "cluster", progress=False) as cluster, \
            MinioServer(region="me-central-1", root=Path(tmp) / "minio") as store:
        api = cluster.api_client()
        operator = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=["bench-*"],
                                   log=Path(tmp) / "operator.log", resync_seconds=30).start()
        try:
            for attempt in range(RUNS):
                namespace = _namespace(api, f"bench-{attempt}")
                with SimulatedCloud(api, namespace, store=store) as cloud:
                    took_applied, took_ready = _create_to_ready(api, namespace, cloud.sample())
                    applied.samples.append(took_applied)
                    ready.samples.append(took_ready)
                    if attempt == RUNS - 1:
                        idle = _idle_writes(cluster)
                    delete_stack(api, namespace)
            for attempt in range(RUNS):
                kubectl.samples.append(_kubectl_apply(cluster, api, f"kubectl-{attempt}"))
        finally:
            operator.stop()
            api.close()
    return [applied, ready, kubectl, idle]


def _namespace(api: client.ApiClient, name: str) -> str:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: core.read_namespaced_service_account("default", name), timeout=60)
    return name


def _expected_children(namespace: str) -> set[tuple[str, str]]:
    """(kind, name) of every object the operator renders for the full sample (nodes aside)."""
    return {("NetworkPolicy", f"{STACK}-egress"), ("PersistentVolumeClaim", "scratch"),
            ("NodePool", karpenter_nodepool(namespace)),
            ("Deployment", "chat"), ("Service", "chat"), ("PodDisruptionBudget", "chat"), ("ScaledObject", "chat"),
            ("Deployment", "embed"), ("Service", "embed"), ("Deployment", "assistant"), ("Service", "assistant"),
            ("Deployment", "indexer")}


def _children(api: client.ApiClient, namespace: str) -> set[tuple[str, str]]:
    selector = f"{STACK_LABEL}={STACK}"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    found = {("Deployment", d.metadata.name) for d in apps.list_namespaced_deployment(namespace, label_selector=selector).items}
    found |= {("Service", s.metadata.name) for s in core.list_namespaced_service(namespace, label_selector=selector).items}
    found |= {("PersistentVolumeClaim", c.metadata.name) for c in
              core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items}
    found |= {("PodDisruptionBudget", b.metadata.name) for b in
              client.PolicyV1Api(api).list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items}
    found |= {("NetworkPolicy", n.metadata.name) for n in
              client.NetworkingV1Api(api).list_namespaced_network_policy(namespace, label_selector=selector).items}
    found |= {("ScaledObject", o["metadata"]["name"]) for o in custom.list_namespaced_custom_object(
        "keda.sh", "v1alpha1", namespace, "scaledobjects", label_selector=selector)["items"]}
    found |= {("NodePool", p["metadata"]["name"]) for p in custom.list_cluster_custom_object(
        "karpenter.sh", "v1", "nodepools", label_selector=selector)["items"]}
    return found


def _create_to_ready(api: client.ApiClient, namespace: str, document: dict[str, Any]) -> tuple[float, float]:
    expected = _expected_children(namespace)
    began = time.monotonic()
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
    wait_until(lambda: expected <= _children(api, namespace), timeout=300, interval=0.1,
               message="every child of the full sample")
    took_applied = round(time.monotonic() - began, 2)
    wait_until(lambda: is_ready(api, namespace), timeout=300, interval=0.1, message="Ready=True")
    return took_applied, round(time.monotonic() - began, 2)


def _idle_writes(cluster: DevCluster) -> Result:
    mark = len(cluster.audit_events())
    time.sleep(IDLE_SECONDS)
    writes = operator_writes(cluster, after=mark)
    return Result(f"operator mutating requests in {IDLE_SECONDS:g} s idle (target 0)", "requests",
                  [float(len(writes))])


def _kubectl_apply(cluster: DevCluster, api: client.ApiClient, name: str) -> float:
    """Time ``kubectl apply --server-side`` of what ``sovereign render`` prints for the sample
    (node labels aside: they patch shared nodes), into a fresh namespace; then clean up."""
    namespace = _namespace(api, name)
    rendered = subprocess.run(
        [sys.executable, "-m", "sovereign", "render", "-f", str(FULL_SAMPLE), "-n", namespace],
        check=True, capture_output=True, text=True).stdout
    manifests = "".join(f"---\n{part}" for part in rendered.split("---\n") if part and "\nkind: Node\n" not in part)
    began = time.monotonic()
    cluster.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=manifests, check=True)
    took = round(time.monotonic() - began, 2)
    cluster.kubectl("delete", "nodepool", karpenter_nodepool(namespace), "--wait=false")
    client.CoreV1Api(api).delete_namespace(namespace)
    return took
