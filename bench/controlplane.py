"""Control-plane benchmarks: cold start to ready (binaries cached) and scheduling 100 GPU pods.

The fleet is widened to 13 GPU nodes per region (104 GPUs) so 100 one-GPU pods pinned to
me-central-1 all fit; the clock runs from the Deployment's creation to 100 Running pods.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kubernetes import client

from bench.result import Result
from sovereign_dev import build, fleet
from sovereign_dev.cluster import DevCluster, wait_until

STARTS = 3
PODS = 100


def run() -> list[Result]:
    build.ensure_all(["etcd", "kubernetes", "kwok", "karpenter"])
    start = Result("cold start to ready (cache present)", "s")
    schedule = Result(f"create Deployment -> {PODS} GPU pods Running", "s")
    for attempt in range(STARTS):
        with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
            wide = fleet.scaled(fleet.load(), gpu_nodes_per_region=13)
            cluster = DevCluster(workdir=Path(tmp), fleet=wide, progress=False)
            began = time.monotonic()
            with cluster:
                start.samples.append(round(time.monotonic() - began, 2))
                schedule.samples.append(_schedule(cluster))
    return [start, schedule]


def _schedule(cluster: DevCluster) -> float:
    api = cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "bench"}})
    wait_until(lambda: core.read_namespaced_service_account("default", "bench"), timeout=60)
    labels = {"app": "bench"}
    began = time.monotonic()
    apps.create_namespaced_deployment("bench", {
        "metadata": {"name": "bench"},
        "spec": {"replicas": PODS, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{
                        "key": fleet.REGION_LABEL, "operator": "In", "values": ["me-central-1"]}]}]}}},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "containers": [{"name": "c", "image": "bench:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}})

    def running() -> bool:
        pods = core.list_namespaced_pod("bench", label_selector="app=bench").items
        return sum(p.status.phase == "Running" for p in pods) == PODS

    wait_until(running, timeout=600, interval=0.2, message=f"{PODS} Running pods")
    elapsed = round(time.monotonic() - began, 2)
    api.close()
    return elapsed
