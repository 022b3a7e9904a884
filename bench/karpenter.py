"""Karpenter benchmark: a pending GPU pod -> a node Karpenter launched for it is Ready -> the pod
Running; then the pod gone -> the empty node given back.

One local cluster (real Karpenter with its KWOK provider, ``DevCluster``); the NodePool is the
one the operator renders for the full sample's h100 pool on the local cloud, with
``consolidateAfter`` of ``CONSOLIDATE_AFTER``; the pod is one replica of the chat model's
rendered Deployment (4 GPUs), weightless. Each figure is printed next to the Karpenter periods
it runs against: its batching of pending pods (``cluster.KARPENTER_PERIODS``) for the launch,
``consolidateAfter`` and Karpenter's disruption pass for the removal.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kubernetes import client

from bench.result import Result
from sovereign.render.facts import ClusterFacts
from sovereign.render.nodepool import render_node_pool
from sovereign_dev.cluster import KARPENTER_PERIODS, DevCluster, wait_until
from sovereign_dev.scenario import local_stack, weightless_deployment

RUNS = 5
NAMESPACE = "bench"
CONSOLIDATE_AFTER = "5s"
NODEPOOL_LABEL = "karpenter.sh/nodepool"


def run() -> list[Result]:
    periods = (f"batch idle {KARPENTER_PERIODS['BATCH_IDLE_DURATION']} s, "
               f"max {KARPENTER_PERIODS['BATCH_MAX_DURATION']} s")
    node_ready = Result(f"pending GPU pod -> Karpenter node Ready ({periods})", "s")
    pod_running = Result(f"pending GPU pod -> pod Running on it ({periods})", "s")
    given_back = Result(f"pod deleted -> empty node removed (consolidateAfter {CONSOLIDATE_AFTER})", "s")
    with tempfile.TemporaryDirectory(prefix="bench-karpenter-") as tmp, \
            DevCluster(workdir=Path(tmp), progress=False) as cluster:
        api = cluster.api_client()
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        wait_until(lambda: core.read_namespaced_service_account("default", NAMESPACE), timeout=60)
        stack = local_stack(NAMESPACE, gpus_limit=16, consolidate_after=CONSOLIDATE_AFTER)
        (nodepool,) = render_node_pool(stack=stack, pool=stack.spec.node_pools[0], facts=ClusterFacts())
        client.CustomObjectsApi(api).create_cluster_custom_object("karpenter.sh", "v1", "nodepools", nodepool)
        selector = f"{NODEPOOL_LABEL}={nodepool['metadata']['name']}"
        for _ in range(RUNS):
            began = time.monotonic()
            apps.create_namespaced_deployment(NAMESPACE, weightless_deployment(stack, "chat", replicas=1))
            wait_until(lambda: any(_ready(n) for n in core.list_node(label_selector=selector).items),
                       timeout=120, interval=0.1, message="a Ready node of the pool")
            node_ready.samples.append(round(time.monotonic() - began, 2))
            wait_until(lambda: [p for p in core.list_namespaced_pod(NAMESPACE).items if p.status.phase == "Running"],
                       timeout=120, interval=0.1, message="the pod Running")
            pod_running.samples.append(round(time.monotonic() - began, 2))
            apps.delete_namespaced_deployment("chat", NAMESPACE)
            began = time.monotonic()
            wait_until(lambda: not core.list_node(label_selector=selector).items, timeout=300, interval=0.2,
                       message="the empty node removed")
            given_back.samples.append(round(time.monotonic() - began, 2))
            wait_until(lambda: not core.list_namespaced_pod(NAMESPACE).items, timeout=60, message="no pod left")
        api.close()
    return [node_ready, pod_running, given_back]


def _ready(node: client.V1Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
