"""The local control plane behaves like a real cluster: scheduling, garbage collection, CRD schemas.

These are the foundation's acceptance tests; every later integration test stands on them.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from sovereign_dev import fleet
from sovereign_dev.cluster import ClusterError, DevCluster, process_alive, wait_until

REGION = "topology.kubernetes.io/region"


def _gpu_deployment(name: str, *, replicas: int, region: str) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [
                            {"key": REGION, "operator": "In", "values": [region]}]}]}}},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "containers": [{"name": "main", "image": "registry.local/inference:1",
                                    "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                },
            },
        },
    }


def _running_pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [p for p in pods if p.status.phase == "Running"]


def test_gpu_pods_run_only_on_gpu_nodes_of_the_required_region(api_client, namespace):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("infer", replicas=6,
                                                                 region="me-central-1"))

    pods = wait_until(lambda: len(p := _running_pods(core, namespace, "infer")) == 6 and p,
                      timeout=120, message="6 Running pods")

    nodes = {n.metadata.name: n for n in core.list_node().items}
    for pod in pods:
        node = nodes[pod.spec.node_name]
        assert node.metadata.labels[REGION] == "me-central-1", pod.metadata.name
        assert int(node.status.allocatable["nvidia.com/gpu"]) == 8
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    # The Deployment controller catches up with its pods a moment later.
    wait_until(lambda: apps.read_namespaced_deployment("infer", namespace).status.ready_replicas == 6,
               timeout=60, message="the Deployment to report 6 ready replicas")


def test_pods_that_fit_no_region_node_stay_pending(api_client, namespace):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("nowhere", replicas=1,
                                                                 region="ap-south-1"))

    def unschedulable():
        pods = core.list_namespaced_pod(namespace, label_selector="app=nowhere").items
        return pods and any(c.reason == "Unschedulable" for c in (pods[0].status.conditions or []))

    wait_until(unschedulable, timeout=60, message="PodScheduled=False/Unschedulable")
    pod = core.list_namespaced_pod(namespace, label_selector="app=nowhere").items[0]
    assert pod.spec.node_name is None


def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(api_client, namespace):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("gc", replicas=2,
                                                                 region="me-central-1"))
    wait_until(lambda: len(_running_pods(core, namespace, "gc")) == 2, timeout=120,
               message="2 Running pods")
    assert apps.list_namespaced_replica_set(namespace, label_selector="app=gc").items

    apps.delete_namespaced_deployment("gc", namespace, propagation_policy="Background")

    wait_until(lambda: not apps.list_namespaced_replica_set(namespace, label_selector="app=gc").items
               and not core.list_namespaced_pod(namespace, label_selector="app=gc").items,
               timeout=120, message="ReplicaSets and Pods of the deleted Deployment to be gone")


def _nodepool(name: str, *, limits: dict) -> dict:
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
        "spec": {
            "template": {"spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                 "name": "default"},
                "requirements": [{"key": REGION, "operator": "In", "values": ["me-central-1"]}],
            }},
            "limits": limits,
        },
    }


def test_karpenter_nodepool_schema_is_the_upstream_one(api_client):
    custom = client.CustomObjectsApi(api_client)
    created = custom.create_cluster_custom_object("karpenter.sh", "v1", "nodepools",
                                                  _nodepool("valid-pool", limits={"nvidia.com/gpu": "32"}))
    try:
        assert created["spec"]["limits"] == {"nvidia.com/gpu": "32"}
        # Defaults from the upstream schema prove it is the real one, not a permissive stand-in.
        assert created["spec"]["disruption"]["consolidateAfter"] == "0s"

        bad = _nodepool("invalid-pool", limits={"nvidia.com/gpu": "32"})
        bad["spec"]["template"]["spec"]["requirements"][0]["operator"] = "Sometimes"
        with pytest.raises(ApiException) as err:
            custom.create_cluster_custom_object("karpenter.sh", "v1", "nodepools", bad)
        assert err.value.status == 422
        message = json.loads(err.value.body)["message"]
        assert "spec.template.spec.requirements[0].operator" in message
        assert 'Unsupported value: "Sometimes"' in message
    finally:
        custom.delete_cluster_custom_object("karpenter.sh", "v1", "nodepools", "valid-pool")


def test_two_clusters_run_side_by_side_and_teardown_leaves_no_process(cluster, tmp_path):
    second = DevCluster(workdir=tmp_path / "second", progress=False)
    with second:
        assert second.ports["apiserver"] != cluster.ports["apiserver"]
        nodes = client.CoreV1Api(second.api_client()).list_node().items
        assert len(nodes) == len(client.CoreV1Api(cluster.api_client()).list_node().items)
        pids = second.pids
        assert len(pids) == 6  # etcd, apiserver, controller-manager, scheduler, KWOK, Karpenter
    for pid in pids:
        assert not process_alive(pid), f"process {pid} of the harness still runs after stop()"
    # The session cluster is untouched by the second one's teardown.
    assert client.CoreV1Api(cluster.api_client()).list_node().items


def test_a_karpenter_without_instance_types_fails_the_start_naming_it_and_its_log(tmp_path):
    """An instance-types file Karpenter cannot parse would leave it running and launching nothing."""
    broken = fleet.load()
    broken["karpenter"]["instanceTypes"][0]["capacity"]["cpu"] = "lots"
    dev = DevCluster(workdir=tmp_path / "broken", fleet=broken, progress=False)

    with pytest.raises(ClusterError) as err:
        dev.start()

    assert err.value.component == "karpenter"
    assert "karpenter could not read its instance types" in str(err.value)
    assert "failed constructing instance types" in str(err.value)  # Karpenter's own line, quoted
    assert "quantities must match the regular expression" in str(err.value)
    assert not [pid for pid in dev.pids if process_alive(pid)]
