"""Reconcile benchmarks: the full sample from creation to applied and to Ready, and idle writes.

Against a local control plane, with the operator as a real ``sovereign run`` subprocess:

- create the full sample -> every child the operator renders exists; -> ``Ready=True``
  (median of ``RUNS``), next to ``kubectl apply --server-side`` of the same rendered manifests;
- mutating requests the operator makes while the stack sits unchanged for ``IDLE_SECONDS``
  (``SOVEREIGN_BENCH_IDLE_SECONDS`` shortens it; target zero), counted from the apiserver's
  audit log by the operator's user agent.

The parts of a cloud the local cluster lacks are simulated by ``devcluster.scenario``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.result import Result
from sovereign_dev.scenario import (
    FULL_SAMPLE, STACK, OperatorProcess, SimulatedCloud, delete_stack, is_ready,
    karpenter_nodepool, operator_writes)
from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev import build
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.minio import MinioServer
from sovereign.render.names import STACK_LABEL

RUNS = 10
IDLE_SECONDS = float(os.environ.get("SOVEREIGN_BENCH_IDLE_SECONDS", 300))


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
            ("Deployment", "indexer"), ("PodMonitor", "chat"), ("PodMonitor", "embed")}


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
    found |= {("PodMonitor", o["metadata"]["name"]) for o in custom.list_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, "podmonitors", label_selector=selector)["items"]}
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
