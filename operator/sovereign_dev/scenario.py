"""A simulated cloud around a SovereignStack, and the operator as a process: for tests and benchmarks.

``SimulatedCloud`` gives the full sample what a real cloud has around it: its Karpenter pool
pointed at the local cloud's node class (the real Karpenter of ``DevCluster`` launches KWOK
nodes for its pending pods), on-premises GPU nodes labelled for its Existing pool, statically
provisioned volumes, and the in-country bucket (on a real MinIO server) with its credentials
Secret. ``OperatorProcess`` runs
``sovereign run`` as a subprocess. Used by ``tests/integration/test_reconcile*.py``, the GPU
reaction tests and ``bench/reconcile.py``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION, SovereignStack, load_documents, parse_stack
from sovereign_dev import fleet as fleet_mod
from sovereign_dev.cluster import REPO_ROOT, DevCluster, free_port, wait_until
from sovereign_dev.minio import MinioServer
from sovereign.kube.admission import CONFIGURATION_NAME
from sovereign.kube.client import USER_AGENT
from sovereign.policy.residency_admission import admission_policies
from sovereign.render.facts import ClusterFacts
from sovereign.render.inference import render_model
from sovereign.render.names import OWNER_ANNOTATION, POOL_LABEL, STACK_ID_LABEL, STACK_LABEL, nodepool_name

FULL_SAMPLE = REPO_ROOT / "manifests" / "samples" / "full.yaml"
STACK = "citizen-services"
#: Nodes of the default fleet the simulation gives a role: the on-premises rack.
RACK_NODES = ("gpu-mec1-2", "gpu-mec1-3", "gpu-euw1-0")  # the last is outside me-central-1
RACK_LABEL = "sovereign.ai/rack"
MUTATING = ("create", "update", "patch", "delete", "deletecollection")


def full_sample() -> dict[str, Any]:
    (document,) = load_documents(FULL_SAMPLE.read_text())
    return document


def local_karpenter_pool(pool: dict[str, Any], *, consolidate_after: str | None = None) -> None:
    """Point a Karpenter pool of a stack document at the local cloud: KWOK's node class, the GPU
    pinned by the local instance types' GPU-name label (``h100`` for an H100 pool), and no AWS
    instance types. ``consolidate_after`` shortens how long an empty node is kept."""
    settings = pool["karpenter"]
    settings.pop("instanceTypes", None)
    fleet = fleet_mod.load()
    settings["nodeClassRef"] = dict(fleet["karpenter"]["nodeClass"])
    if "gpu" in pool:
        settings["gpuName"] = fleet_mod.local_gpu_name(fleet, product=pool["gpu"]["product"])
    if consolidate_after is not None:
        settings["consolidateAfter"] = consolidate_after



def karpenter_nodepool(namespace: str) -> str:
    """Name of the NodePool the operator makes for the full sample's Karpenter pool in ``namespace``."""
    document = full_sample()
    document["metadata"]["namespace"] = namespace
    return nodepool_name(parse_stack(document), "h100")


def local_stack(namespace: str, *, gpus_limit: int | None = None,
                consolidate_after: str | None = None) -> SovereignStack:
    """The full sample in ``namespace``, its Karpenter pool on the local cloud
    (``local_karpenter_pool``), capped at ``gpus_limit`` GPUs when given."""
    document = full_sample()
    document["metadata"]["namespace"] = namespace
    for pool in document["spec"]["nodePools"]:
        if pool["provisioner"] == "Karpenter":
            local_karpenter_pool(pool, consolidate_after=consolidate_after)
            if gpus_limit is not None:
                pool["limits"] = {"gpus": gpus_limit}
    return parse_stack(document)


def weightless_deployment(stack: SovereignStack, model: str, *, replicas: int) -> dict[str, Any]:
    """The model's Deployment as the operator renders it, without its weights: no loader, its
    volumes emptyDirs. Its pods ask for what the model's pods ask for (GPUs, CPU, memory, the
    pool's nodes), so Karpenter sizes nodes for them as for the model, with no bucket needed."""
    spec = next(m for m in stack.spec.models if m.name == model)
    deployment = copy.deepcopy(next(o for o in render_model(stack=stack, model=spec, facts=ClusterFacts())
                                    if o["kind"] == "Deployment"))
    pod = deployment["spec"]["template"]["spec"]
    pod.pop("initContainers", None)
    pod["volumes"] = [{"name": volume["name"], "emptyDir": {}} for volume in pod["volumes"]]
    deployment["spec"]["replicas"] = replicas
    return deployment


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
        return self

    def sample(self) -> dict[str, Any]:
        """The full sample, its S3 store pointed at this cloud's bucket, its Karpenter pool at
        the local cloud's node class."""
        document = full_sample()
        for pool in document["spec"]["nodePools"]:
            if pool["provisioner"] == "Karpenter":
                local_karpenter_pool(pool)
        corpus = next(s for s in document["spec"]["dataStores"] if s["name"] == "corpus")
        corpus["s3"] |= {"bucket": self.bucket, "endpoint": self.store.endpoint, "region": self.store.region,
                         "forcePathStyle": True}
        return document

    def __exit__(self, *exc: object) -> None:
        # Also whatever a stack that was never finalized left behind, so the next run starts clean:
        # its NodePools (Karpenter then gives their nodes back) and the rack's labels.
        for pool in self.custom.list_cluster_custom_object("karpenter.sh", "v1", "nodepools")["items"]:
            owner = (pool["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION, "")
            if owner.startswith(f"{self.namespace}/"):
                with contextlib.suppress(client.ApiException):
                    self.custom.delete_cluster_custom_object("karpenter.sh", "v1", "nodepools",
                                                             pool["metadata"]["name"])
        for node in RACK_NODES:
            self.core.patch_node(node, {"metadata": {
                "labels": {RACK_LABEL: None, POOL_LABEL: None, STACK_LABEL: None, STACK_ID_LABEL: None},
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


class OperatorProcess:
    """``sovereign run`` as a subprocess against a cluster, logging to a file."""

    def __init__(self, *, kubeconfig: str, namespaces: list[str], log: Path, resync_seconds: float = 3) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log = log
        self.resync_seconds = resync_seconds
        self.process: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        """The command line; a subclass extends it (e.g. to serve webhooks)."""
        # No admission webhooks: their configurations would outlive this process in a shared
        # cluster (they fail closed); the residency audit runs, as often as the resync.
        args = [sys.executable, "-m", "sovereign", "run", "--standalone", "--verbose", "--no-webhooks",
                "--resync-seconds", str(self.resync_seconds), "--audit-seconds", str(self.resync_seconds)]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        return args

    def start(self) -> OperatorProcess:
        args = self.args()
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


class WebhookOperator(OperatorProcess):
    """``sovereign run`` with residency admission (the apiserver's policies, and its lookup
    webhooks on loopback), as the chart's operator runs, and its metrics on ``metrics_port``. The
    policies and the webhook configuration outlive it (they keep enforcing, and failing closed):
    ``remove_webhooks`` when the cluster is shared."""

    def __init__(self, *, audit_seconds: float, metrics_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audit_seconds = audit_seconds
        self.metrics_port = metrics_port

    def args(self) -> list[str]:
        args = [arg for arg in super().args() if arg not in ("--verbose", "--no-webhooks")]
        audit = args.index("--audit-seconds")
        args[audit + 1] = str(self.audit_seconds)
        return args + ["--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                       "--webhook-address", "127.0.0.1", "--webhook-port", str(free_port()),
                       "--webhook-host", "127.0.0.1"]

    @staticmethod
    def remove_webhooks(api: client.ApiClient) -> None:
        """Remove the residency webhook configuration, policies and bindings from the cluster."""
        remove_residency_admission(api)


def remove_residency_admission(api: client.ApiClient) -> None:
    """Delete what residency admission installs cluster-wide (the webhook configuration, the
    mutating one of earlier versions, the policies and bindings), so a shared test cluster does
    not keep enforcing for an operator that is gone. Parameter ConfigMaps go with their namespaces."""
    admission = client.AdmissionregistrationV1Api(api)
    for delete in (admission.delete_mutating_webhook_configuration,
                   admission.delete_validating_webhook_configuration):
        with contextlib.suppress(client.ApiException):
            delete(CONFIGURATION_NAME)
    deletes = {"ValidatingAdmissionPolicy": admission.delete_validating_admission_policy,
               "ValidatingAdmissionPolicyBinding": admission.delete_validating_admission_policy_binding,
               "MutatingAdmissionPolicy": admission.delete_mutating_admission_policy,
               "MutatingAdmissionPolicyBinding": admission.delete_mutating_admission_policy_binding}
    # Bindings first, then the policies they name.
    for obj in reversed(admission_policies(operator_users=["-"])):
        with contextlib.suppress(client.ApiException):
            deletes[obj["kind"]](obj["metadata"]["name"])


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


@contextlib.contextmanager
def operating(cluster: DevCluster, api: client.ApiClient, namespace: str, *, log: Path, resync_seconds: float,
              stack: str = STACK) -> Iterator[OperatorProcess]:
    """A ``sovereign run`` watching ``namespace``; at the end the stack ``stack`` is deleted while
    it still runs (its finalizer releases the nodes the stack claimed), then it stops."""
    process = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace], log=log,
                              resync_seconds=resync_seconds).start()
    try:
        yield process
        delete_stack(api, namespace, stack)
    finally:
        process.stop()


# --- the benchmark --------------------------------------------------------------------------------


@contextlib.contextmanager
def operated_cloud(cluster: DevCluster, api: client.ApiClient, namespace: str, *, store: MinioServer,
                   log: Path) -> Iterator[tuple[SimulatedCloud, OperatorProcess]]:
    """A ``SimulatedCloud`` in ``namespace`` watched by a ``sovereign run`` (logging to ``log``).

    On the way out every stack of the namespace is deleted and finalized by the operator, which
    then stops, so cluster-scoped effects (NodePools, node labels) do not leak into other tests.
    """
    with SimulatedCloud(api, namespace, store=store) as cloud:
        operator = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace], log=log).start()
        try:
            yield cloud, operator
        finally:
            try:
                stacks = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                for stack in stacks["items"]:
                    delete_stack(api, namespace, stack["metadata"]["name"])
            finally:
                operator.stop()
