"""The residency admission policies' objects: the per-namespace parameters (annotations) and the
labels that choose the bindings, and which binding denies and which only warns. What the CEL in them decides is tested
through the real apiserver (tests/integration/test_residency_policies.py)."""

from __future__ import annotations

import pytest
from sovereign.api import Residency
from sovereign.policy import residency as r
from sovereign.policy import residency_admission as cel

OPERATOR = "system:serviceaccount:sovereign-system:sovereign-stack-operator"


def scope(**residency) -> r.Scope:
    stacks = {"citizen": Residency.model_validate({"jurisdiction": "QA", "regions": ["me-central-2", "me-central-1"],
                                                   **residency})}
    scope = r.scope_for(namespace="gov-qa", stacks=stacks, labels=None)
    assert scope is not None
    return scope


def test_the_parameters_carry_the_strictest_rules_as_strings_beside_the_labels_that_choose_the_bindings():
    metadata = cel.namespace_metadata(scope=scope(
        enforcement="Audit", exposure={"allowNodePort": True}, egress={"allowHostNamespaces": True}))

    assert metadata == {
        "labels": {"sovereign.ai/governed": "true", "sovereign.ai/enforcement": "Audit"},
        "annotations": {"sovereign.ai/residency-regions": "me-central-1,me-central-2",
                        "sovereign.ai/residency-governor": "stack gov-qa/citizen (QA)",
                        "sovereign.ai/residency-allow-load-balancer": "false",
                        "sovereign.ai/residency-allow-node-port": "true",
                        "sovereign.ai/residency-allow-host-namespaces": "true"}}


def test_labels_and_parameters_go_with_the_last_stack():
    metadata = cel.namespace_metadata(scope=None)

    assert metadata["labels"] == {"sovereign.ai/governed": None, "sovereign.ai/enforcement": None}
    assert set(metadata["annotations"]) == set(cel.PARAMETERS)
    assert set(metadata["annotations"].values()) == {None}


def test_enforce_bindings_deny_and_audit_bindings_warn_and_audit_in_governed_namespaces_only():
    objects = {(o["kind"], o["metadata"]["name"]): o for o in cel.admission_policies(operator_users=[OPERATOR])}

    for policy in (cel.WORKLOAD_POLICY, cel.SERVICE_POLICY):
        enforce = objects["ValidatingAdmissionPolicyBinding", f"{policy}-enforce"]["spec"]
        audit = objects["ValidatingAdmissionPolicyBinding", f"{policy}-audit"]["spec"]
        assert enforce["validationActions"] == ["Deny"]
        assert audit["validationActions"] == ["Warn", "Audit"]
        assert enforce["matchResources"]["namespaceSelector"] == {"matchLabels": {
            "sovereign.ai/governed": "true", "sovereign.ai/enforcement": "Enforce"}}
        assert audit["matchResources"]["namespaceSelector"]["matchLabels"]["sovereign.ai/enforcement"] == "Audit"
        # The Namespace is the parameter object (namespaceObject): no paramKind to grant access to.
        assert "paramRef" not in enforce
    mutating = objects["MutatingAdmissionPolicyBinding", cel.AFFINITY_POLICY]["spec"]
    assert mutating["matchResources"]["namespaceSelector"] == {"matchLabels": {"sovereign.ai/governed": "true"}}


def test_every_workload_kind_is_judged_at_the_workload():
    objects = {o["metadata"]["name"]: o for o in cel.admission_policies(operator_users=[OPERATOR])
               if o["kind"] == "ValidatingAdmissionPolicy"}

    rules = objects[cel.WORKLOAD_POLICY]["spec"]["matchConstraints"]["resourceRules"]

    assert {(g, res) for rule in rules for g in rule["apiGroups"] for res in rule["resources"]} == {
        ("", "pods"), ("apps", "deployments"), ("apps", "statefulsets"), ("apps", "daemonsets"),
        ("apps", "replicasets"), ("batch", "jobs"), ("batch", "cronjobs")}
    assert objects[cel.WORKLOAD_POLICY]["spec"]["failurePolicy"] == "Fail"


def test_only_the_operator_may_change_governance():
    objects = {o["metadata"]["name"]: o for o in cel.admission_policies(operator_users=[OPERATOR])
               if o["kind"] == "ValidatingAdmissionPolicy"}

    conditions = objects[cel.GOVERNANCE_POLICY]["spec"]["matchConditions"]

    assert conditions == [{"name": "not-the-operator", "expression": f"!(request.userInfo.username in ['{OPERATOR}'])"}]
    with pytest.raises(ValueError, match="operator_users"):
        cel.admission_policies(operator_users=[])
