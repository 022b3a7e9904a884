"""The chart's access objects agree with the code that needs them.

The agent's RBAC and own-node admission policy are defined once, in
``sovereign.kube.nodes.agent_access_manifests``; the chart must render exactly those. The
operator may write only the webhook configuration and admission policies the code names, and the chart installs exactly the residency policies the code builds. What the apiserver makes of
the rules is tested in tests/integration/test_chart_rbac.py.
"""

from __future__ import annotations

from sovereign_dev.chart import NAMESPACE, RELEASE
from sovereign.kube.admission import CONFIGURATION_NAME
from sovereign.kube.nodes import agent_access_manifests
from sovereign.policy.residency_admission import admission_policies

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
    kinds = {o["kind"] for o in render({"agent": {"ownNodePolicy": False}})
             if o["metadata"]["name"] == f"{RELEASE}-gpu-agent"}

    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert "ClusterRole" in kinds


def test_the_operator_may_write_only_its_own_admission_objects(render):
    role = next(o for o in render() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == RELEASE)
    admission_rules = [r for r in role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    names = sorted({o["metadata"]["name"] for o in admission_policies(operator_users=["x"])})

    assert admission_rules == [
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
         "resourceNames": [CONFIGURATION_NAME], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
         "resourceNames": [CONFIGURATION_NAME], "verbs": ["get", "delete"]},
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings",
                       "mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
         "resourceNames": admission_rules[2]["resourceNames"], "verbs": ["get", "create", "patch"]}]
    assert sorted(admission_rules[2]["resourceNames"]) == names
    assert not [r for r in role["rules"] if "configmaps" in r["resources"]]
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]


def test_the_chart_installs_the_residency_policies_the_operator_applies(render):
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy",
             "MutatingAdmissionPolicyBinding")
    rendered = [o for o in render(namespace="gov-ops") if o["kind"] in kinds
                and o["metadata"]["name"].startswith("sovereign-residency")]

    expected = admission_policies(operator_users=[f"system:serviceaccount:gov-ops:{RELEASE}"])
    # Helm orders objects by kind.
    assert sorted(rendered, key=repr) == sorted(expected, key=repr)
    assert not [o for o in render({"webhook": {"enabled": False}}) if o["kind"] in kinds
                and o["metadata"]["name"].startswith("sovereign-residency")]


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
    # The residency admission policies are not access rules: they stay.
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})
             if not o["metadata"]["name"].startswith("sovereign-residency")}

    assert not kinds & set(AGENT_KINDS)
    assert "ServiceAccount" in kinds
