"""The Argo CD health check of docs/gitops.md, run in Lua on the statuses the operator writes.

The Lua is read from the document itself (the ``argocd-cm`` block users copy), run with ``lupa``
the way Argo CD runs it: the resource as the global ``obj``, a table with ``status`` and
``message`` returned.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import lupa
import pytest
import yaml

from sovereign_dev import chart
from sovereign.render.status import invalid_status

GITOPS = chart.REPO_ROOT / "docs" / "gitops.md"
KEY = "resource.customizations.health.sovereign.ai_SovereignStack"


def health_check() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", GITOPS.read_text(), re.S)
    (config_map,) = [yaml.safe_load(block) for block in blocks if KEY in block]
    return config_map["data"][KEY]


def health(stack: dict[str, Any]) -> tuple[str, str]:
    runtime = lupa.LuaRuntime()
    runtime.globals().obj = runtime.table_from(stack, recursive=True)
    result = runtime.execute(health_check())
    return result["status"], result["message"]


def stack(*conditions: tuple[str, str, str], generation: int = 2, observed: int | None = 2,
          enforcement: str = "Enforce", violations: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "sovereign.ai/v1alpha1", "kind": "SovereignStack",
        "metadata": {"name": "citizen-services", "namespace": "gov-qa", "generation": generation},
        "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"], "enforcement": enforcement}}}
    if observed is not None:
        body["status"] = {"observedGeneration": observed, "violationCount": violations, "conditions": [
            {"type": kind, "status": value, "reason": reason, "message": f"{kind} says {reason}",
             "lastTransitionTime": "2026-01-01T00:00:00Z"} for kind, value, reason in conditions]}
    return body


def test_a_ready_stack_is_healthy():
    assert health(stack(("Ready", "True", "StackReady"))) == ("Healthy", "Ready says StackReady")


def test_a_stack_the_operator_has_not_caught_up_with_is_progressing():
    assert health(stack(observed=None)) == ("Progressing", "Waiting for the operator to report on the stack")
    assert health(stack(("Ready", "True", "StackReady"), generation=3, observed=2)) == (
        "Progressing", "Waiting for the operator to reconcile generation 3")
    assert health(stack(("Ready", "Unknown", "Reconciling")))[0] == "Progressing"


@pytest.mark.parametrize("reason", ["ModelsNotReady", "ApplicationsNotReady", "ClaimPending", "NodePoolNotReady",
                                    "NoMatchingNodes"])
def test_a_stack_on_its_way_is_progressing(reason):
    assert health(stack(("Ready", "False", reason), ("Reconciling", "True", reason), ("Stalled", "False", "Reconciling"))
                  ) == ("Progressing", f"{reason}: Ready says {reason}")


@pytest.mark.parametrize("reason", ["InvalidSpec", "ChildRejected", "CredentialsSecretMissing", "CredentialsInvalid",
                                    "LocationOutsideRegions"])
def test_a_stalled_stack_is_degraded(reason):
    assert health(stack(("Ready", "False", reason), ("Stalled", "True", reason))) == (
        "Degraded", f"{reason}: Ready says {reason}")


def test_an_enforced_residency_violation_is_degraded_an_audited_one_is_not():
    enforced = stack(("Ready", "False", "PodOutsideRegions"), ("ResidencyCompliant", "False", "PodOutsideRegions"),
                     ("Stalled", "True", "PodOutsideRegions"))
    audited_waiting = stack(("Ready", "False", "ModelsNotReady"), ("ResidencyCompliant", "False", "PodOutsideRegions"),
                            ("Reconciling", "True", "ModelsNotReady"), enforcement="Audit")
    audited_ready = stack(("Ready", "True", "StackReady"), ("ResidencyCompliant", "False", "PodOutsideRegions"),
                          enforcement="Audit", violations=2)

    assert health(enforced)[0] == "Degraded"
    assert health(audited_waiting)[0] == "Progressing"
    assert health(audited_ready) == (
        "Healthy", "Ready says StackReady (Audit mode: 2 residency violation(s) recorded)")


def test_the_status_the_operator_writes_for_an_invalid_spec_is_degraded():
    written = invalid_status(generation=4, previous=None, now=datetime(2026, 1, 1, tzinfo=UTC),
                             message="spec.models[0].nodePool: no node pool named h200")
    body = {**stack(generation=4, observed=None),
            "status": written.model_dump(mode="json", by_alias=True, exclude_none=True)}

    assert health(body) == ("Degraded", "InvalidSpec: spec.models[0].nodePool: no node pool named h200")
