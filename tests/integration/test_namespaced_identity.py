"""Two teams, one stack name: stacks called ``prod`` in two namespaces never share a node.

Every team names its stack ``prod`` and its pool ``gpu``. Each stack claims one on-premises H100
node (an Existing pool chosen by hostname); team A asks for more GPUs than its node has. What a
user must see: A's extra replica stays Pending (Unschedulable) rather than landing on B's node,
which still has free GPUs and carries the same pool and stack names; each node carries its
stack's namespaced identity. Runs ``sovereign run`` against the local control plane with the
scheduler placing the pods on KWOK nodes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign.render.names import OWNER_ANNOTATION, STACK_ID_LABEL
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.scenario import OperatorProcess, SimulatedCloud, delete_stack

NAME = "prod"
#: Team A's node and team B's node: both me-central-1 H100 nodes of the default fleet, 8 GPUs each.
NODES = {"a": "gpu-mec1-2", "b": "gpu-mec1-3"}
#: A wants 3 replicas of 4 GPUs (12 > its node's 8); B runs one (4 of its node's 8 stay free).
REPLICAS = {"a": 3, "b": 1}


@pytest.fixture
def second_namespace(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"{namespace[:56]}-b"
    core.create_namespace({"metadata": {"name": name, "labels": {"sovereign.ai/test": "true"}}})
    wait_until(lambda: core.read_namespaced_service_account("default", name), timeout=60,
               message=f"ServiceAccount {name}/default")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def _stack(cloud: SimulatedCloud, *, node: str, replicas: int) -> dict[str, Any]:
    """The full sample cut down to one Existing pool ``gpu`` on ``node`` and one model on it."""
    document = copy.deepcopy(cloud.sample())
    document["metadata"] = {"name": NAME}
    spec = document["spec"]
    spec["nodePools"] = [{"name": "gpu", "provisioner": "Existing",
                          "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perNode": 8},
                          "existing": {"nodeSelector": {"kubernetes.io/hostname": node}}}]
    spec["dataStores"] = [s for s in spec["dataStores"] if s["name"] == "corpus"]
    embed = next(m for m in spec["models"] if m["name"] == "embed")
    spec["models"] = [{**embed, "nodePool": "gpu", "gpusPerReplica": 4, "replicas": replicas}]
    spec["applications"] = []
    return document


def _pods(api: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"sovereign.ai/stack={NAME}").items


def _unschedulable(pod: client.V1Pod) -> bool:
    return any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
               for c in pod.status.conditions or [])


def test_same_named_stacks_in_two_namespaces_never_share_a_node(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str, second_namespace: str,
        minio_servers, tmp_path) -> None:
    teams = {"a": namespace, "b": second_namespace}
    custom = client.CustomObjectsApi(api_client)
    store = minio_servers["me-central-1"]
    with SimulatedCloud(api_client, teams["a"], store=store) as cloud_a, \
            SimulatedCloud(api_client, teams["b"], store=store) as cloud_b:
        operator = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=list(teams.values()),
                                   log=tmp_path / "operator.log").start()
        try:
            for team, cloud in (("b", cloud_b), ("a", cloud_a)):
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, teams[team], PLURAL, _stack(cloud, node=NODES[team], replicas=REPLICAS[team]))

            def settled() -> bool:
                a, b = _pods(api_client, teams["a"]), _pods(api_client, teams["b"])
                return (len(a) == 3 and len(b) == 1 and sum(p.spec.node_name is not None for p in a) == 2
                        and any(_unschedulable(p) for p in a) and b[0].spec.node_name is not None)

            deadline = time.monotonic() + 180
            while not settled():
                if time.monotonic() > deadline:
                    placed = {team: [(p.metadata.name, p.spec.node_name) for p in _pods(api_client, ns)]
                              for team, ns in teams.items()}
                    pytest.fail(f"pods never settled: {placed}\noperator log:\n{operator.tail()}")
                time.sleep(0.5)
            # Give the scheduler a few more rounds: the Pending replica must stay off B's node.
            time.sleep(5)

            core = client.CoreV1Api(api_client)
            for team, ns in teams.items():
                node = core.read_node(NODES[team]).metadata
                assert node.labels[STACK_ID_LABEL] == f"{ns}.{NAME}"
                assert node.annotations[OWNER_ANNOTATION] == f"{ns}/{NAME}"
                placed = {p.spec.node_name for p in _pods(api_client, ns) if p.spec.node_name}
                assert placed == {NODES[team]}, f"team {team}'s pods ran on {placed}"
            (pending,) = [p for p in _pods(api_client, teams["a"]) if not p.spec.node_name]
            assert _unschedulable(pending)
        finally:
            try:
                for ns in teams.values():
                    delete_stack(api_client, ns, NAME)
            finally:
                operator.stop()
