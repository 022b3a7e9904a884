"""The operator end to end: ``sovereign run`` as a real process against the local control plane.

The full sample becomes node pools, vLLM servers, storage and applications on simulated GPU
nodes; the stack reaches Ready; a model swap rolls only its server; removed entries are pruned;
deleting the stack cleans up all but retained data; a restarted operator writes nothing for an
unchanged stack (counted from the apiserver's audit log and its metrics). The chat model's node
comes from the real Karpenter (its KWOK provider) through the NodePool the operator renders;
volume provisioning is simulated by ``sovereign_dev.scenario.SimulatedCloud``.

The sample's S3 store (a fake endpoint) is pointed at a real MinIO server of me-central-1 with
an encrypted bucket and its credentials Secret: the reconciler verifies the bucket before it
starts the models and applications that use it (a failing store holds them back,
``test_residency_store_gate.py``), and the residency audit in the same operator checks it again
every period, so both find it in the region and Ready means what it says.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from rbac_helpers import install_chart_access

from sovereign_dev.scenario import (
    MUTATING,
    OperatorProcess,
    SimulatedCloud,
    delete_stack,
    karpenter_nodepool,
    operator_writes,
    stack_conditions,
)
from sovereign.api import CRD_NAME, GROUP, PLURAL, VERSION
from sovereign_dev.cluster import DevCluster

STACK = "citizen-services"
SELECTOR = f"sovereign.ai/stack={STACK}"
REGION = "topology.kubernetes.io/region"
#: Seconds between the operator's resyncs in these tests, so a few of them fit in a short wait.
RESYNC = 3


@pytest.fixture
def cloud(api_client: client.ApiClient, namespace: str, minio_servers) -> Iterator[SimulatedCloud]:
    with SimulatedCloud(api_client, namespace, store=minio_servers["me-central-1"]) as simulated:
        yield simulated


@pytest.fixture
def operator(request: pytest.FixtureRequest, cluster: DevCluster, api_client: client.ApiClient, namespace: str,
             cloud: SimulatedCloud, tmp_path) -> Iterator[OperatorProcess]:
    """``sovereign run`` as cluster-admin, or (param ``chart-account``) as the Helm chart's
    operator ServiceAccount with exactly the chart's RBAC, through a token of that account."""
    kubeconfig, access = cluster.kubeconfig, None
    if getattr(request, "param", "cluster-admin") == "chart-account":
        access = install_chart_access(cluster, api_client, namespace=namespace)
        kubeconfig = str(access.kubeconfig(access.operator_token(), tmp_path / "operator.kubeconfig"))
    process = OperatorProcess(kubeconfig=kubeconfig, namespaces=[namespace], log=tmp_path / "operator.log",
                              resync_seconds=RESYNC).start()
    # Who the apiserver sees: the admin certificate's user, or the chart's ServiceAccount.
    process.identity = access.username("operator") if access else "sovereign-admin"
    if access is not None:
        request.addfinalizer(access.remove)
    yield process
    custom = client.CustomObjectsApi(api_client)
    try:
        if not process.running():
            process.start()  # a test that stopped it: its finalizer still has work to do
        for stack in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
            delete_stack(api_client, namespace, stack["metadata"]["name"])
    finally:
        process.stop()
        for stack in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, stack["metadata"]["name"],
                                                  {"metadata": {"finalizers": None}})


def _created(api: client.ApiClient, namespace: str, document: dict[str, Any]) -> bool:
    """Create ``document``; False while the apiserver still refuses it as invalid."""
    try:
        _create(api, namespace, document)
    except client.ApiException as err:
        if err.status == 422:
            return False
        raise
    return True


def _create(api: client.ApiClient, namespace: str, document: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)


def _patch_spec(api: client.ApiClient, namespace: str, change: Callable[[dict[str, Any]], None]) -> None:
    custom = client.CustomObjectsApi(api)
    stack = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK)
    spec = copy.deepcopy(stack["spec"])
    change(spec)
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK,
                                            {**stack, "spec": spec})


def _wait(what: str, predicate: Callable[[], Any], operator: OperatorProcess, api: client.ApiClient,
          namespace: str, timeout: float = 240) -> Any:
    """Poll ``predicate``; on timeout fail with the stack's conditions and the operator's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    conditions = {k: (v["status"], v["reason"], v["message"]) for k, v in stack_conditions(api, namespace).items()}
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\nconditions: {conditions}\n"
                f"operator log:\n{operator.tail()}")


def _ready(api: client.ApiClient, namespace: str, generation: int = 1) -> bool:
    stack = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK)
    status = stack.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return status.get("observedGeneration") == generation and ready.get("status") == "True"


def _ready_stack(api: client.ApiClient, namespace: str, operator: OperatorProcess, document: dict[str, Any]) -> None:
    _create(api, namespace, document)
    _wait("Ready=True", lambda: _ready(api, namespace), operator, api, namespace)


def _deployments(api: client.ApiClient, namespace: str) -> dict[str, client.V1Deployment]:
    return {d.metadata.name: d for d in
            client.AppsV1Api(api).list_namespaced_deployment(namespace, label_selector=SELECTOR).items}


@pytest.mark.parametrize("operator", ["cluster-admin", "chart-account"], indirect=True)
def test_full_sample_becomes_every_child_and_reaches_ready(cluster, api_client, namespace, operator,
                                                           cloud) -> None:
    _ready_stack(api_client, namespace, operator, cloud.sample())

    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    assert set(_deployments(api_client, namespace)) == {"chat", "embed", "assistant", "indexer"}
    assert {s.metadata.name for s in core.list_namespaced_service(namespace, label_selector=SELECTOR).items} == {
        "chat", "embed", "assistant"}
    assert [b.metadata.name for b in client.PolicyV1Api(api_client).list_namespaced_pod_disruption_budget(
        namespace, label_selector=SELECTOR).items] == ["chat"]
    assert [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
        "keda.sh", "v1alpha1", namespace, "scaledobjects", label_selector=SELECTOR)["items"]] == ["chat"]
    # The cluster serves the Prometheus Operator's PodMonitor: every model gets its scrape target.
    assert sorted(o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, "podmonitors", label_selector=SELECTOR)["items"]) == ["chat", "embed"]
    claim = core.read_namespaced_persistent_volume_claim("scratch", namespace)
    assert claim.status.phase == "Bound"
    policy = client.NetworkingV1Api(api_client).read_namespaced_network_policy(f"{STACK}-egress", namespace)
    assert policy.spec.policy_types == ["Egress"]
    nodepool = custom.get_cluster_custom_object("karpenter.sh", "v1", "nodepools", karpenter_nodepool(namespace))
    requirements = {r["key"]: r["values"] for r in nodepool["spec"]["template"]["spec"]["requirements"]}
    assert requirements[REGION] == ["me-central-1"]

    # The Existing pool claimed the rack's nodes in the region and refused the one outside it.
    nodes = {n.metadata.name: n for n in core.list_node().items}
    onprem = sorted(name for name, n in nodes.items() if n.metadata.labels.get("sovereign.ai/pool") == "onprem")
    assert onprem == ["gpu-mec1-2", "gpu-mec1-3"]
    assert "sovereign.ai/pool" not in nodes["gpu-euw1-0"].metadata.labels
    pools = stack_conditions(api_client, namespace)["NodePoolsReady"]
    assert "node gpu-euw1-0 not used: in region eu-west-1, outside the allowed regions" in pools["message"]

    # Every pod runs in the allowed region, models on their pool's nodes only.
    pods = core.list_namespaced_pod(namespace, label_selector=SELECTOR).items
    assert pods and all(p.status.phase == "Running" for p in pods)
    for pod in pods:
        node = nodes[pod.spec.node_name]
        assert node.metadata.labels[REGION] == "me-central-1", pod.metadata.name
        model = pod.metadata.labels["app.kubernetes.io/name"]
        if model == "chat":
            # A node Karpenter launched for the pool, of the GPU the pool pinned.
            assert node.metadata.labels["karpenter.sh/nodepool"] == karpenter_nodepool(namespace)
            assert node.metadata.labels["karpenter.kwok.sh/instance-gpu-name"] == "h100"
        elif model == "embed":
            assert pod.spec.node_name in onprem

    stack = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK)
    # The pool's status names the GPU and instance type Karpenter really launched.
    h100 = next(p for p in stack["status"]["nodePools"] if p["name"] == "h100")
    assert (h100["gpuNames"], h100["instanceTypes"]) == (["h100"], ["gpu-h100-8x"])
    assert {m["name"]: m["endpoint"] for m in stack["status"]["models"]} == {
        "chat": f"http://chat.{namespace}.svc:8000/v1", "embed": f"http://embed.{namespace}.svc:8000/v1"}
    # The residency audit, in the same operator, finds the bucket and every pod in the region.
    _wait("ResidencyCompliant=True", lambda: stack_conditions(api_client, namespace).get(
        "ResidencyCompliant", {}).get("status") == "True", operator, api_client, namespace)
    assert _ready(api_client, namespace)
    row = cluster.kubectl("get", "sstack", "-n", namespace, check=True).stdout.splitlines()[1].split()
    assert row[:5] == [STACK, "True", "QA", "2/2", "0"]
    # Every write the operator made here was made as the identity the test gave it.
    writes = [e for e in operator_writes(cluster) if (e.get("objectRef") or {}).get("namespace") == namespace]
    assert writes and {e["user"]["username"] for e in writes} == {operator.identity}
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={STACK}").items
    assert any(e.reason == "StackReady" and e.type == "Normal" for e in events)
    assert apps.read_namespaced_deployment("chat", namespace).spec.template.spec.init_containers[0].name == "fetch-model"


def test_swapping_a_model_rolls_its_server_and_leaves_applications_untouched(api_client, namespace, operator,
                                                                             cloud) -> None:
    _ready_stack(api_client, namespace, operator, cloud.sample())
    before = _deployments(api_client, namespace)

    _patch_spec(api_client, namespace, lambda spec: spec["models"][0].update(model="Qwen/Qwen3-32B"))
    _wait("the swapped model Ready", lambda: _ready(api_client, namespace, generation=2), operator, api_client,
          namespace)

    after = _deployments(api_client, namespace)
    assert after["chat"].metadata.generation == before["chat"].metadata.generation + 1
    args = after["chat"].spec.template.spec.containers[0].args
    assert args[args.index("--served-model-name") + 1:][:2] == ["chat", "Qwen/Qwen3-32B"]
    for name in ("assistant", "indexer", "embed"):
        assert after[name].metadata.generation == before[name].metadata.generation, name
        assert after[name].spec.template == before[name].spec.template, name
    stack = client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, STACK)
    assert next(m for m in stack["status"]["models"] if m["name"] == "chat")["model"] == "Qwen/Qwen3-32B"


def test_removing_a_model_prunes_its_children(api_client, namespace, operator, cloud) -> None:
    _ready_stack(api_client, namespace, operator, cloud.sample())

    def without_chat(spec: dict[str, Any]) -> None:
        spec["models"] = [m for m in spec["models"] if m["name"] != "chat"]
        spec["applications"][0]["models"] = ["embed"]

    _patch_spec(api_client, namespace, without_chat)
    _wait("Ready after removing chat", lambda: _ready(api_client, namespace, generation=2), operator, api_client,
          namespace)

    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    _wait("chat's objects pruned", lambda: "chat" not in _deployments(api_client, namespace), operator, api_client,
          namespace)
    assert "chat" not in {s.metadata.name for s in core.list_namespaced_service(namespace).items}
    assert not client.PolicyV1Api(api_client).list_namespaced_pod_disruption_budget(namespace).items
    assert not custom.list_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects")["items"]
    assert set(_deployments(api_client, namespace)) == {"embed", "assistant", "indexer"}


@pytest.mark.parametrize("operator", ["cluster-admin", "chart-account"], indirect=True)
def test_deleting_the_stack_removes_everything_but_retained_data(api_client, namespace, operator, cloud) -> None:
    document = cloud.sample()
    document["spec"]["dataStores"][1]["deletionPolicy"] = "Retain"
    document["spec"]["dataStores"].append({"name": "tmp", "volume": {"size": "10Gi"}, "deletionPolicy": "Delete"})
    _ready_stack(api_client, namespace, operator, document)
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    assert {"scratch", "tmp"} <= {c.metadata.name for c in core.list_namespaced_persistent_volume_claim(namespace).items}

    delete_stack(api_client, namespace)

    def cleaned() -> bool:
        return not _deployments(api_client, namespace) and not core.list_namespaced_service(
            namespace, label_selector=SELECTOR).items and "tmp" not in {
            c.metadata.name for c in core.list_namespaced_persistent_volume_claim(namespace).items}

    _wait("garbage collection of the stack's children", cleaned, operator, api_client, namespace)
    assert not custom.list_cluster_custom_object("karpenter.sh", "v1", "nodepools", label_selector=SELECTOR)["items"]
    # The rack's nodes lose the stack's labels; Karpenter gives back the nodes of the deleted NodePool.
    _wait("no node of the stack left", lambda: not core.list_node(label_selector=SELECTOR).items, operator,
          api_client, namespace)
    assert not client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    retained = core.read_namespaced_persistent_volume_claim("scratch", namespace)
    assert retained.metadata.deletion_timestamp is None and retained.status.phase == "Bound"


def test_restarted_operator_makes_no_writes_for_an_unchanged_stack(cluster, api_client, namespace, operator,
                                                                   cloud) -> None:
    _ready_stack(api_client, namespace, operator, cloud.sample())
    # Let the first passes settle: the status of the last child that became ready is written.
    _wait("a quiet operator", lambda: _quiet(cluster, seconds=2 * RESYNC), operator, api_client, namespace)
    operator.stop()
    mark = len(cluster.audit_events())
    counted = _stack_writes(cluster)

    resumed = operator.log.read_text().count("Handler 'reconcile' succeeded")
    operator.start()
    _wait("the restarted operator to resume the stack",
          lambda: operator.log.read_text().count("Handler 'reconcile' succeeded") > resumed, operator, api_client,
          namespace)
    time.sleep(4 * RESYNC)  # several resync passes

    writes = [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name"))
              for e in operator_writes(cluster, after=mark)]
    assert writes == []
    # Cross-check with the apiserver's metrics: every write to a stack meanwhile (by anyone: the
    # namespace controller cleaning up earlier tests' namespaces) is in the audit log, so the
    # audit log's count of the operator's writes is complete.
    audited = [e for e in cluster.audit_events()[mark:]
               if e["objectRef"].get("resource") == "sovereignstacks" and e["verb"] in MUTATING]
    assert _stack_writes(cluster) - counted == len(audited)
    assert operator.running()


@contextlib.contextmanager
def _stored_under_an_older_crd(api: client.ApiClient, rule_fragment: str) -> Iterator[None]:
    """Let the apiserver accept what the CRD's rule containing ``rule_fragment`` forbids, as an
    object stored before the CRD gained that rule was; the CRD is restored afterwards."""
    extensions = client.ApiextensionsV1Api(api)
    original = api.sanitize_for_serialization(extensions.read_custom_resource_definition(CRD_NAME))
    older = copy.deepcopy(original)
    spec_schema = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [
        rule for rule in spec_schema["x-kubernetes-validations"] if rule_fragment not in rule["message"]]
    extensions.replace_custom_resource_definition(CRD_NAME, older)
    try:
        yield
    finally:
        current = extensions.read_custom_resource_definition(CRD_NAME)
        original["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(CRD_NAME, original)


def test_a_spec_that_cannot_be_rendered_ends_as_ready_false_without_retries(cluster, api_client, namespace,
                                                                           operator, cloud) -> None:
    document = cloud.sample()
    document["spec"]["applications"][0]["name"] = "chat"  # collides with the model's Deployment and Service
    # Today's CRD refuses this; a stack stored under an older CRD is how it reaches the operator.
    with _stored_under_an_older_crd(api_client, "name of a model"):
        _wait("the older CRD to be served", lambda: _created(api_client, namespace, document), operator,
              api_client, namespace, timeout=60)

    def invalid() -> bool:
        ready = stack_conditions(api_client, namespace).get("Ready", {})
        return ready.get("reason") == "InvalidSpec"

    _wait("Ready=False/InvalidSpec", invalid, operator, api_client, namespace)
    ready = stack_conditions(api_client, namespace)["Ready"]
    assert ready["status"] == "False"
    assert "spec.applications[0].name: is also the name of a model" in ready["message"]
    assert not _deployments(api_client, namespace)
    # No retry loop: once the first residency audit has written its part, passes write nothing.
    _wait("a quiet operator", lambda: _quiet(cluster, seconds=2 * RESYNC), operator, api_client, namespace)
    mark = len(cluster.audit_events())
    time.sleep(3 * RESYNC)
    assert operator_writes(cluster, after=mark) == []


def _quiet(cluster: DevCluster, *, seconds: float) -> bool:
    mark = len(cluster.audit_events())
    time.sleep(seconds)
    return not operator_writes(cluster, after=mark)


def _stack_writes(cluster: DevCluster) -> float:
    """The apiserver's own count of mutating requests on SovereignStacks, by any client."""
    total = 0.0
    for line in cluster.metrics().splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="sovereignstacks"' in line and re.search(
                r'verb="(PATCH|POST|PUT|DELETE|DELETECOLLECTION|APPLY)"', line):
            total += float(line.rsplit(" ", 1)[1])
    return total
