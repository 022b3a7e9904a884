"""The chart's RBAC against the real apiserver: enough for the operator and the agent, no more.

The access objects of the rendered chart are applied for a fresh release in the test's
namespace (``rbac_helpers``), then:

- the apiserver's own authorizer (SubjectAccessReviews) answers, for the operator's account,
  every request the operator's code makes, read from the code's tables of kinds, and refuses
  what it never needs;
- the reconciler (``services.reconcile``) runs a full pass of the full sample, and its finalizer,
  with the operator account's token, not as cluster admin;
- the GPU agent's service, on the fake NVML, marks its own node with a token bound to a pod
  there, and is refused another node.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kubernetes import client
from rbac_helpers import ChartAccess, install_chart_access, make_gpu_node

from sovereign.api import GROUP, PLURAL, VERSION, Residency
from sovereign_dev.cluster import wait_until
from sovereign.kube import admission as kube_admission
from sovereign.kube import resources
from sovereign_dev.scenario import SimulatedCloud
from sovereign.kube.client import Kube
from sovereign.policy.residency import scope_for
from sovereign.policy.residency_admission import REGIONS_ANNOTATION, admission_policies, namespace_metadata
from sovereign.render.names import GOVERNED_LABEL
from sovereign.kube.nodes import (
    EVENTS_NAMESPACE,
    GPU_HEALTHY_CONDITION,
    GPU_UNHEALTHY_TAINT_KEY,
    Condition,
    GpuHealthRecord,
    GpuNodeMarks,
    NodeForbidden,
    Taint,
    publish_gpu_health,
)
from sovereign.nvml import open_reader
from sovereign_dev.nvml_fake import healthy_node, inject_xid, write_scenario
from sovereign.services.facts import read_cluster_facts
from sovereign.services.gpu_metrics import GpuMetrics
from sovereign.services.node_agent import AgentSettings, NodeAgent
from sovereign.services.reconcile import finalize, reconcile
from sovereign.services.residency_stores import StoreVerdicts

WAIT = 90  # seconds; generous, the machine is shared

#: Kinds the reconciler creates, applies and prunes (``kube.resources``).
CHILDREN = (resources.DEPLOYMENT, resources.SERVICE, resources.PERSISTENT_VOLUME_CLAIM,
            resources.POD_DISRUPTION_BUDGET, resources.NETWORK_POLICY, resources.SCALED_OBJECT,
            resources.NODE_POOL)
READ = ("get", "list", "watch")


@pytest.fixture
def access(cluster, api_client, namespace) -> Iterator[ChartAccess]:
    applied = install_chart_access(cluster, api_client, namespace=namespace)
    yield applied
    applied.remove()


def _allowed(api_client, access: ChartAccess, component: str, verb: str, kind: resources.ResourceType,
             *, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> bool:
    """The apiserver's answer to: may ``component``'s account ``verb`` this?"""
    group = kind.api_version.rpartition("/")[0]
    attributes = {"verb": verb, "group": group, "resource": kind.plural, "version": "*"}
    attributes |= {key: value for key, value in (("namespace", namespace), ("name", name),
                                                 ("subresource", subresource)) if value}
    review = client.AuthorizationV1Api(api_client).create_subject_access_review({"spec": {
        "user": access.username(component),
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{access.namespace}",
                   "system:authenticated"],
        "resourceAttributes": attributes}})
    return review.status.allowed


def _resource(api_version: str, plural: str, namespaced: bool = True) -> resources.ResourceType:
    return resources.ResourceType(api_version, "", plural, namespaced)


def test_the_operator_account_may_do_what_the_operator_does_and_nothing_more(api_client, access):
    ns = "gov-qa"
    may = lambda verb, kind, **where: _allowed(api_client, access, "operator", verb, kind, **where)  # noqa: E731
    wanted = {
        **{(verb, kind.plural, None): (kind, {"namespace": ns}) for kind in CHILDREN
           for verb in (*READ, "create", "patch", "delete")},
        **{(verb, "sovereignstacks", None): (resources.STACK, {"namespace": ns})
           for verb in (*READ, "patch")},
        ("patch", "sovereignstacks", "status"): (resources.STACK, {"namespace": ns, "subresource": "status"}),
        ("update", "sovereignstacks", "finalizers"): (resources.STACK,
                                                      {"namespace": ns, "subresource": "finalizers"}),
        **{(verb, "pods", None): (resources.POD, {"namespace": ns}) for verb in READ},
        **{(verb, "nodes", None): (resources.NODE, {}) for verb in (*READ, "patch")},
        **{(verb, "namespaces", None): (kube_admission.NAMESPACE, {}) for verb in (*READ, "patch")},
        ("get", "persistentvolumes", None): (kube_admission.PERSISTENT_VOLUME, {}),
        **{(verb, "storageclasses", None): (_resource("storage.k8s.io/v1", "storageclasses", False), {})
           for verb in READ},
        ("get", "secrets", None): (resources.SECRET, {"namespace": ns, "name": "s3-creds"}),
        ("create", "events", None): (resources.EVENT, {"namespace": ns}),
        ("create", "pods", "eviction"): (resources.POD, {"namespace": ns, "subresource": "eviction"}),
        **{(verb, "validatingwebhookconfigurations", None): (
            _resource(kube_admission.ADMISSION_API, "validatingwebhookconfigurations", False),
            {"name": kube_admission.CONFIGURATION_NAME}) for verb in ("get", "create", "patch")},
        **{(verb, "mutatingwebhookconfigurations", None): (
            _resource(kube_admission.ADMISSION_API, "mutatingwebhookconfigurations", False),
            {"name": kube_admission.CONFIGURATION_NAME}) for verb in ("get", "delete")},
        **{(verb, f"{resources.resource_type(obj).plural}/{obj['metadata']['name']}", None): (
            resources.resource_type(obj), {"name": obj["metadata"]["name"]})
           for obj in admission_policies(operator_users=["-"]) for verb in ("get", "create", "patch")},
    }
    refused = {
        "list secrets": may("list", resources.SECRET, namespace=ns),
        "watch secrets": may("watch", resources.SECRET, namespace=ns),
        "create pods": may("create", resources.POD, namespace=ns),
        "delete nodes": may("delete", resources.NODE),
        "delete namespaces": may("delete", kube_admission.NAMESPACE),
        **{f"{verb} another webhook configuration": may(
            verb, _resource(kube_admission.ADMISSION_API, "validatingwebhookconfigurations", False),
            name="someone-elses-webhook") for verb in ("create", "patch")},
        "create clusterroles": may("create", _resource("rbac.authorization.k8s.io/v1", "clusterroles", False)),
        "read configmaps": may("get", _resource("v1", "configmaps"), namespace=ns),
        "patch another admission policy": may("patch", _resource(
            kube_admission.ADMISSION_API, "validatingadmissionpolicies", False), name="someone-elses-policy"),
        "mint tokens": may("create", _resource("v1", "serviceaccounts"), namespace=ns,
                           subresource="token"),
    }

    missing = [f"{verb} {plural}{'/' + sub if sub else ''}" for (verb, plural, sub), (kind, where)
               in wanted.items() if not may(verb, kind, **where)]
    assert missing == [], f"the chart's operator role lacks what the operator does: {missing}"
    assert [what for what, allowed in refused.items() if allowed] == []


def test_the_agent_account_may_mark_nodes_and_record_events_only(api_client, access):
    may = lambda verb, kind, **where: _allowed(api_client, access, "gpu-agent", verb, kind, **where)  # noqa: E731
    assert may("get", resources.NODE) and may("patch", resources.NODE)
    assert may("patch", resources.NODE, subresource="status")
    assert may("create", resources.EVENT, namespace=EVENTS_NAMESPACE)
    assert not may("list", resources.NODE)
    assert not may("delete", resources.NODE)
    assert not may("create", resources.EVENT, namespace="kube-system")
    assert not may("get", resources.SECRET, namespace=access.namespace)


def test_the_reconciler_runs_a_full_pass_as_the_operator_account(api_client, access, namespace,
                                                                 minio_servers):
    custom = client.CustomObjectsApi(api_client)
    kube = Kube(access.api_client(access.operator_token()))
    with SimulatedCloud(api_client, namespace, store=minio_servers["me-central-1"]) as cloud:
        document = cloud.sample()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
        name = document["metadata"]["name"]
        _full_pass_as_operator(custom, kube, namespace, name)


def _full_pass_as_operator(custom: client.CustomObjectsApi, kube: Kube, namespace: str, name: str) -> None:
    try:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        # The store verdicts too are taken with the operator's token (it reads the Secret).
        outcome = reconcile(kube=kube, body=body, facts=read_cluster_facts(kube),
                            stores=StoreVerdicts(recheck_seconds=0))

        assert outcome.rejected == ()
        assert {key.kind for key in outcome.applied} >= {
            "Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "NetworkPolicy",
            "ScaledObject", "PodMonitor", "NodePool"}
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)["status"]
        assert {c["type"] for c in status["conditions"]} >= {"Ready", "ModelsReady", "NodePoolsReady"}

        removed = finalize(kube=kube, body=body)
        # The Karpenter NodePool, and the pool labels of the two rack nodes inside the region.
        assert sorted(key.kind for key in removed) == ["Node", "Node", "NodePool"]
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def test_the_operator_account_may_govern_namespaces_and_install_residency_admission(api_client, access, namespace):
    operator_api = access.api_client(access.operator_token())
    kube = Kube(operator_api)
    scope = scope_for(namespace=namespace, labels=None, stacks={"citizen": Residency.model_validate(
        {"jurisdiction": "QA", "regions": ["me-central-1"]})})

    assert kube_admission.set_namespace_metadata(kube, namespace=namespace,
                                                 metadata=namespace_metadata(scope=scope)) is True
    core = client.CoreV1Api(api_client)
    written = core.read_namespace(namespace).metadata
    assert written.labels[GOVERNED_LABEL] == "true"
    assert written.annotations[REGIONS_ANNOTATION] == "me-central-1"
    # What the apiserver knows the operator by is what the governance policy lets through.
    username = kube.username()
    assert username == access.username("operator")
    # Dry runs: in force, the policies would judge every governed namespace of the shared test
    # cluster, and the configuration would send pods to a webhook that is not there.
    # Authorization happens all the same.
    for obj in admission_policies(operator_users=[username]):
        kube.apply(obj, field_manager=kube_admission.FIELD_MANAGER, dry_run=True)
    admission = client.AdmissionregistrationV1Api(operator_api)
    configuration = {"apiVersion": kube_admission.ADMISSION_API, "kind": "ValidatingWebhookConfiguration",
                     "metadata": {"name": kube_admission.CONFIGURATION_NAME}, "webhooks": []}
    admission.patch_validating_webhook_configuration(
        kube_admission.CONFIGURATION_NAME, configuration, field_manager=kube_admission.FIELD_MANAGER,
        force=True, dry_run="All", _content_type="application/apply-patch+yaml")
    with pytest.raises(client.ApiException) as refused:
        admission.patch_validating_webhook_configuration(
            "someone-elses-webhook", {**configuration, "metadata": {"name": "someone-elses-webhook"}},
            field_manager=kube_admission.FIELD_MANAGER, force=True, dry_run="All",
            _content_type="application/apply-patch+yaml")
    assert refused.value.status == 403
    assert kube_admission.set_namespace_metadata(kube, namespace=namespace,
                                                 metadata=namespace_metadata(scope=None)) is True
    cleared = core.read_namespace(namespace).metadata
    assert GOVERNED_LABEL not in (cleared.labels or {}) and REGIONS_ANNOTATION not in (cleared.annotations or {})


@pytest.fixture
def gpu_nodes(api_client) -> Iterator[tuple[str, str]]:
    nodes = (make_gpu_node(api_client), make_gpu_node(api_client))
    yield nodes
    for node in nodes:
        client.CoreV1Api(api_client).delete_node(node)


def test_the_agent_marks_its_own_node_under_the_charts_rbac_and_no_other(api_client, access, gpu_nodes,
                                                                         tmp_path):
    own, other = gpu_nodes
    agent_api = access.api_client(access.agent_token(pod_on=own))
    scenario = tmp_path / "nvml.json"
    write_scenario(scenario, healthy_node(seed=own))
    settings = AgentSettings(poll_interval_s=0.5, xid_settle_s=0.2, resync_interval_s=2)
    agent = NodeAgent(reader=open_reader(fake_scenario=scenario), api=agent_api, node_name=own,
                      settings=settings, metrics=GpuMetrics(hostname=own))
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, kwargs={"stop": stop}, daemon=True)
    runner.start()
    core = client.CoreV1Api(api_client)

    def condition(node: str) -> dict:
        conditions = core.read_node(node).status.conditions or []
        found = next((c for c in conditions if c.type == GPU_HEALTHY_CONDITION), None)
        return {"status": found.status, "reason": found.reason} if found else {}

    try:
        wait_until(lambda: condition(own).get("reason") == "AllGPUsHealthy", timeout=WAIT,
                   message=f"the agent to mark {own} healthy")
        inject_xid(scenario, gpu=3, xid=79)
        wait_until(lambda: condition(own) == {"status": "False", "reason": "Xid79OnGPU3"}, timeout=WAIT,
                   message=f"the agent to mark {own} unhealthy after XID 79")
        taints = [(t.key, t.value) for t in core.read_node(own).spec.taints or []]
        assert (GPU_UNHEALTHY_TAINT_KEY, "Xid79") in taints
        events = core.list_namespaced_event(
            EVENTS_NAMESPACE, field_selector=f"involvedObject.name={own},reason=GPUUnhealthy").items
        assert events, "the agent's GPUUnhealthy event"
    finally:
        stop.set()
        runner.join(timeout=30)

    marks = GpuNodeMarks(condition=Condition(status="False", reason="Xid79OnGPU0", message="test"),
                         label="Unhealthy", record=GpuHealthRecord(state="Unhealthy", healthy=7, total=8),
                         taint=Taint(value="Xid79", effect="NoSchedule"))
    # The admission policy takes a moment to be in force after it is created: a dry run shows when.
    wait_until(lambda: _dry_run_status(agent_api, other) == 403, timeout=WAIT,
               message="the chart's admission policy to refuse the agent another node")
    with pytest.raises(NodeForbidden, match="may only change the node its own pod runs on"):
        publish_gpu_health(agent_api, node_name=other, marks=marks)
    assert condition(other) == {}
    assert GPU_UNHEALTHY_TAINT_KEY not in [t.key for t in core.read_node(other).spec.taints or []]


def _dry_run_status(agent_api: client.ApiClient, node: str) -> int:
    try:
        client.CoreV1Api(agent_api).patch_node(node, {"metadata": {"labels": {"sovereign.ai/probe": "x"}}},
                                               dry_run="All", _content_type="application/merge-patch+json")
    except client.ApiException as err:
        return err.status
    return 200
