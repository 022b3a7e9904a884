"""Evicting a pod through the Eviction API (``policy/v1`` Eviction), never by deleting it.

An eviction is a delete that the apiserver first checks against the PodDisruptionBudgets
covering the pod: when the budget allows no disruption now it answers 429 Too Many Requests,
which becomes ``EvictionBlocked`` (try again later; the budget frees up once replacements are
ready). The eviction is bound to the pod's uid, so a namesake created since is never touched.
Other failures are the operator's usual ``kube.errors``.

Called by ``services.gpu_reaction`` to move inference pods off nodes with a fatal GPU fault.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sovereign.kube import errors
from sovereign.kube.client import CONNECT_TIMEOUT, FIELD_MANAGER, READ_TIMEOUT, Kube


class EvictionBlocked(errors.KubeError):
    """A PodDisruptionBudget allows no disruption of the pod now; ``budgets`` says which and why."""

    def __init__(self, message: str, *, what: str, budgets: str) -> None:
        super().__init__(message, what=what, status=429, reason="TooManyRequests")
        self.budgets = budgets


def evict_pod(kube: Kube, *, namespace: str, name: str, uid: str | None) -> bool:
    """Ask the apiserver to evict the pod; False when it is already gone (or replaced by a namesake).

    Raises ``EvictionBlocked`` when a PodDisruptionBudget refuses, else a ``kube.errors`` error.
    """
    what = f"Pod {namespace}/{name}"
    body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                            "metadata": {"name": name, "namespace": namespace}}
    if uid:
        body["deleteOptions"] = {"preconditions": {"uid": uid}}
    try:
        client.CoreV1Api(kube.api).create_namespaced_pod_eviction(
            name, namespace, body, field_manager=FIELD_MANAGER,
            _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    except ApiException as err:
        if err.status == 429:
            budgets = _causes(err.body) or "a PodDisruptionBudget allows no disruption now"
            raise EvictionBlocked(f"eviction of {what} blocked: {budgets}; retrying later",
                                  what=what, budgets=budgets) from err
        failure = errors.from_response(status=err.status or 0, body=err.body, action="evict",
                                       what=what)
        # Gone, or the uid precondition failed because a namesake replaced it: nothing to evict.
        if isinstance(failure, errors.NotFound | errors.Conflict):
            return False
        raise failure from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise errors.Unavailable(f"could not evict {what}: apiserver unreachable ({err})",
                                 what=what) from err
    return True


def _causes(body: Any) -> str:
    """The budgets' own words from a 429 answer ("The disruption budget chat needs 1 healthy ...")."""
    try:
        details = json.loads(body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return ""
    return "; ".join(c["message"] for c in details.get("causes") or [] if c.get("message"))
