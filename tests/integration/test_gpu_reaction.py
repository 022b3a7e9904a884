"""The operator's reaction to GPU faults, against the real local apiserver.

The Eviction API as ``kube.evictions`` uses it (a PodDisruptionBudget that allows no disruption
blocks it; nothing is deleted directly), and the whole chain with ``sovereign run`` and one
``sovereign agent`` per simulated GPU node on the fake NVML: a scripted XID 79 on the node that
serves the model marks the node, turns the stack's ``GPUHealthy`` False naming node and GPU,
evicts the vLLM pod and its replacement runs on the healthy node of the same region; an XID 13
is counted and changes nothing else; the stack's PodDisruptionBudget holds the last serving
replica on a faulty node (reported once) until a replacement is ready elsewhere.

The stack, its fresh GPU nodes and their agents are ``bench.gpu_agent.GpuStack``, which the
benchmark of the same chain uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from sovereign_dev.gpu_scenario import FAULT_CONFIG, GpuStack, tainted
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.scenario import OperatorProcess
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.evictions import EvictionBlocked, evict_pod
from sovereign.kube.nodes import GPU_HEALTHY_CONDITION
from sovereign_dev.nvml_fake import healthy_node

WAIT = 180  # seconds; generous, the machine is shared


# -- the Eviction API ---------------------------------------------------------------------------------

@pytest.fixture
def kube(cluster: DevCluster) -> Iterator[Kube]:
    connected = Kube.connect(kubeconfig=cluster.kubeconfig)
    yield connected
    connected.close()


def _running_pod(api: client.ApiClient, namespace: str, name: str) -> client.V1Pod:
    """A pod bound to a simulated CPU node, Running once KWOK has seen it."""
    core = client.CoreV1Api(api)
    pod = core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": {"app": "guarded"}},
        "spec": {"nodeName": "cpu-mec1-0", "containers": [{"name": "c", "image": "example:1"}]}})
    wait_until(lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running", timeout=WAIT,
               message=f"pod {name} Running")
    return pod


def _gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    except client.ApiException as err:
        return err.status == 404
    return pod.metadata.deletion_timestamp is not None


def test_a_budget_that_allows_no_disruption_blocks_the_eviction(api_client, namespace, kube):
    pod = _running_pod(api_client, namespace, "guarded")
    policy = client.PolicyV1Api(api_client)
    policy.create_namespaced_pod_disruption_budget(namespace, {
        "metadata": {"name": "keep-one"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}})
    # The disruption controller has to count the healthy pods before the budget says anything.
    wait_until(lambda: policy.read_namespaced_pod_disruption_budget("keep-one", namespace).status.current_healthy == 1,
               timeout=WAIT, message="the budget to count the pod")

    with pytest.raises(EvictionBlocked) as blocked:
        evict_pod(kube, namespace=namespace, name="guarded", uid=pod.metadata.uid)

    assert blocked.value.budgets == "The disruption budget keep-one needs 1 healthy pods and has 1 currently"
    assert f"eviction of Pod {namespace}/guarded blocked" in str(blocked.value)
    assert not _gone(api_client, namespace, "guarded")


def test_an_eviction_removes_only_the_incarnation_it_names(api_client, namespace, kube):
    pod = _running_pod(api_client, namespace, "target")

    assert evict_pod(kube, namespace=namespace, name="target", uid="not-its-uid") is False
    assert not _gone(api_client, namespace, "target")
    assert evict_pod(kube, namespace=namespace, name="target", uid=pod.metadata.uid) is True
    wait_until(lambda: _gone(api_client, namespace, "target"), timeout=WAIT, message="the evicted pod to go")
    assert evict_pod(kube, namespace=namespace, name="no-such-pod", uid=None) is False


def test_an_eviction_without_rights_is_forbidden(api_client, cluster, namespace, kube):
    _running_pod(api_client, namespace, "target")
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token("nobody", namespace, {
        "spec": {"expirationSeconds": 600}}).status.token
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    nobody = Kube(client.ApiClient(configuration))
    try:
        with pytest.raises(errors.Forbidden, match=f"could not evict Pod {namespace}/target: HTTP 403"):
            evict_pod(nobody, namespace=namespace, name="target", uid=None)
    finally:
        nobody.close()
    assert not _gone(api_client, namespace, "target")


# -- the operator's reaction ----------------------------------------------------------------------------

@pytest.fixture
def operator(cluster: DevCluster, namespace: str, tmp_path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace],
                              log=tmp_path / "operator.log", resync_seconds=30).start()
    yield process
    process.stop()


@pytest.fixture
def stack(api_client, cluster: DevCluster, namespace: str, operator: OperatorProcess, tmp_path) -> Iterator[GpuStack]:
    """The stack serving one model on two fresh GPU nodes of me-central-1 (plus a decoy node in
    eu-west-1), each with its agent; the model's pod Running on one of them."""
    with GpuStack(api_client, kubeconfig=cluster.kubeconfig, namespace=namespace, workdir=tmp_path,
                  agent_config=FAULT_CONFIG) as created:
        _wait(operator, lambda: created.condition().get("reason") == "GPUsHealthy",
              "GPUHealthy=True/GPUsHealthy on the stack")
        _wait(operator, created.serving_node, "the vLLM pod Running")
        yield created


def _wait(operator: OperatorProcess, predicate, what: str):
    try:
        return wait_until(predicate, timeout=WAIT, interval=0.5, message=what)
    except TimeoutError as err:
        pytest.fail(f"{err}\noperator log:\n{operator.tail(60)}")


def _events(api_client, namespace: str, stack: str, reason: str) -> list[client.CoreV1Event]:
    return client.CoreV1Api(api_client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={stack},reason={reason}").items


def test_a_fatal_xid_moves_the_vllm_pod_to_a_healthy_node_in_the_region(api_client, namespace, operator, stack):
    sick = stack.serving_node()
    (healthy,) = set(stack.agents) - {sick}
    (pod,) = [p.metadata.name for p in stack.model_pods()]

    stack.agents[sick].inject_xid(gpu=3, xid=79)

    core = client.CoreV1Api(api_client)
    # The agent writes the taint (metadata) and the condition (status) in two patches: wait for both.
    node = _wait(operator, lambda: (n := core.read_node(sick)) and tainted(n) == "Xid79" and any(
        c.type == GPU_HEALTHY_CONDITION and c.status == "False" for c in n.status.conditions) and n,
                 f"the Xid79 taint and GPUHealthy=False on {sick}")
    assert next(c for c in node.status.conditions if c.type == GPU_HEALTHY_CONDITION).status == "False"
    condition = _wait(operator, lambda: (c := stack.condition()).get("status") == "False" and c,
                      "GPUHealthy=False on the stack")
    assert condition["reason"] == "GPUsUnhealthy"
    uuid3 = healthy_node(seed=sick).gpus[3].uuid
    assert f"{sick} (me-central-1): GPU 3 ({uuid3}) Xid79, fatal" in condition["message"]
    pools = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "sovereign.ai", "v1alpha1", namespace, "sovereignstacks", stack.name)["status"]["nodePools"]
    assert pools == [{"name": "gpu", "nodes": 2, "readyNodes": 2, "gpus": 16, "unhealthyGPUs": 1,
                      "instanceTypes": ["kwok-gpu"], "gpuNames": ["NVIDIA-H100-80GB-HBM3"]}]

    _wait(operator, lambda: stack.serving_node() == healthy, f"the vLLM pod Running on {healthy}")
    assert pod not in [p.metadata.name for p in stack.model_pods()]
    (evicted,) = _events(api_client, namespace, stack.name, "PodEvicted")
    assert f"evicted pod {pod} of model chat from node {sick} (me-central-1): GPU 3 ({uuid3}) Xid79, fatal" \
        in evicted.message
    assert core.read_node(healthy).metadata.labels["topology.kubernetes.io/region"] == "me-central-1"

    stack.agents[sick].clear_faults()

    _wait(operator, lambda: stack.condition().get("reason") == "GPUsHealthy", "GPUHealthy=True again")
    assert tainted(core.read_node(sick)) is None
    assert stack.serving_node() == healthy  # recovering does not move the pod back


def test_an_xid_13_is_counted_and_changes_nothing_else(api_client, namespace, operator, stack):
    serving = stack.serving_node()
    agent = stack.agents[serving]
    (pod,) = [p.metadata.name for p in stack.model_pods()]
    core = client.CoreV1Api(api_client)
    before = core.read_node(serving)

    agent.inject_xid(gpu=1, xid=13)

    _wait(operator, lambda: agent.value("sovereign_gpu_xid_total", gpu="1", xid="13") == 1,
          "XID 13 counted by the agent")
    polls = agent.polls()
    _wait(operator, lambda: agent.polls() >= polls + 3, "three more polls")
    after = core.read_node(serving)
    assert tainted(after) is None
    healthy = next(c for c in after.status.conditions if c.type == GPU_HEALTHY_CONDITION)
    assert (healthy.status, healthy.reason) == ("True", "AllGPUsHealthy")
    assert healthy.last_transition_time == next(
        c for c in before.status.conditions if c.type == GPU_HEALTHY_CONDITION).last_transition_time
    # Nothing to wait for when nothing is to happen: give the operator's GPU check (every 2 s)
    # a few chances to do something wrong.
    time.sleep(6)
    assert stack.condition()["reason"] == "GPUsHealthy"
    assert [p.metadata.name for p in stack.model_pods()] == [pod]
    assert not _events(api_client, namespace, stack.name, "PodEvicted")



def test_a_disruption_budget_holds_the_last_serving_replica_until_a_replacement_is_ready(
        api_client, cluster, namespace, operator, tmp_path):
    # Two replicas of a whole-node model on two nodes: the rendered budget lets one be down.
    # XID 79 is held until the GPU is reset, which this test never does: the faults last the
    # whole test (a node that recovered would take the replacement back).
    with GpuStack(api_client, kubeconfig=cluster.kubeconfig, namespace=namespace, workdir=tmp_path,
                  replicas=2) as stack:
        _wait(operator, lambda: len(stack.serving_nodes()) == 2, "both vLLM pods Running")
        # The pods can run before the same pass has applied the budget: wait for it too.
        budget = _wait(operator, lambda: _budget_allowing_one(api_client, namespace),
                       "the budget to allow one disruption")
        assert budget.spec.max_unavailable == 1
        (first, first_node), (second, second_node) = sorted(stack.serving_nodes().items())

        stack.agents[first_node].inject_xid(gpu=0, xid=79)
        # Evicted; its replacement finds no room (the other node is full, this one tainted).
        _wait(operator, lambda: first not in stack.serving_nodes(), f"{first} evicted")
        stack.agents[second_node].inject_xid(gpu=0, xid=79)

        blocked = _wait(operator, lambda: _events(api_client, namespace, stack.name, "EvictionBlocked"),
                        "an EvictionBlocked event")
        assert blocked[0].message.startswith(f"pod {second} stays on node {second_node} (GPU 0 (")
        assert "The disruption budget chat needs 1 healthy pods and has 1 currently" in blocked[0].message
        assert stack.serving_nodes() == {second: second_node}  # never deleted around the budget

        spare = stack.add_node()

        # The first replacement runs on the new node; then the budget lets the retry evict the second.
        _wait(operator, lambda: second not in stack.serving_nodes(), f"{second} evicted once the budget allows")
        assert list(stack.serving_nodes().values()) == [spare]
        evicted = [e.message for e in _events(api_client, namespace, stack.name, "PodEvicted")]
        assert sorted(m.split()[2] for m in evicted) == [first, second]
        assert len(_events(api_client, namespace, stack.name, "EvictionBlocked")) == 1  # reported once


def _budget_allowing_one(api_client, namespace: str):
    """The model's disruption budget once it allows one disruption, else None (also when absent)."""
    try:
        budget = client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget("chat", namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return budget if budget.status.disruptions_allowed == 1 else None
