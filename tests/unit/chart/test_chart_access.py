"""The chart's access objects agree with the code that needs them.

The agent's RBAC and own-node admission policy are defined once, in
``sovereign.kube.nodes.agent_access_manifests``; the chart must render exactly those. The
operator may write only the webhook configurations the code names. What the apiserver makes of
the rules is tested in tests/integration/test_chart_rbac.py.
"""

from __future__ import annotations

from sovereign_dev.chart import NAMESPACE, RELEASE
from sovereign.kube.admission import CONFIGURATION_NAME
from sovereign.kube.nodes import agent_access_manifests

AGENT_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ValidatingAdmissionPolicy",
               "ValidatingAdmissionPolicyBinding")


def _without_labels(obj: dict) -> dict:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "labels"}}


def test_the_agents_access_is_exactly_what_the_agent_code_defines(render):
    agent = f"{RELEASE}-gpu-agent"
    rendered = [_without_labels(o) for o in render(namespace="gpu-ops")
                if o["kind"] in AGENT_KINDS and o["metadata"]["name"] == agent]

    expected = agent_access_manifests(name=agent, service_account=agent, namespace="gpu-ops")
    assert sorted(rendered, key=repr) == sorted(expected, key=repr)


def test_the_agent_can_be_left_to_rbac_alone(render):
    kinds = {o["kind"] for o in render({"agent": {"ownNodePolicy": False}})}

    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert "ClusterRole" in kinds


def test_the_operator_may_write_only_its_own_webhook_configurations(render):
    role = next(o for o in render() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == RELEASE)
    webhook_rules = [r for r in role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]

    assert webhook_rules == [{"apiGroups": ["admissionregistration.k8s.io"],
                              "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
                              "resourceNames": [CONFIGURATION_NAME], "verbs": ["get", "create", "patch"]}]
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]


def test_each_account_is_bound_to_its_own_roles(render):
    objects = render()
    bindings = {(o["kind"], o["metadata"]["name"]): (o["roleRef"]["name"], o["subjects"])
                for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")}

    def account(name: str) -> list[dict]:
        return [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]

    assert bindings == {
        ("ClusterRoleBinding", RELEASE): (RELEASE, account(RELEASE)),
        ("ClusterRoleBinding", f"{RELEASE}-gpu-agent"): (f"{RELEASE}-gpu-agent", account(f"{RELEASE}-gpu-agent")),
        ("RoleBinding", f"{RELEASE}-gpu-agent"): (f"{RELEASE}-gpu-agent", account(f"{RELEASE}-gpu-agent")),
    }


def test_watched_namespaces_limit_peering_access_to_those_namespaces(render):
    objects = render({"operator": {"watchNamespaces": ["gov-qa"]}})
    cluster_role = next(o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == RELEASE)
    peering_role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == f"{RELEASE}-peering")

    assert not [r for r in cluster_role["rules"] if r["apiGroups"] == ["kopf.dev"]]
    assert peering_role["metadata"]["namespace"] == "gov-qa"
    assert {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "resourceNames": [RELEASE],
            "verbs": ["get", "patch"]} in peering_role["rules"]


def test_without_rbac_the_chart_creates_no_roles(render):
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}

    assert not kinds & set(AGENT_KINDS)
    assert "ServiceAccount" in kinds
