"""The kinds the operator reads and writes, and their REST paths.

A fixed table instead of API discovery: the operator only ever touches these kinds, so it needs
no discovery requests at startup, and a kind it does not know is a programming error rather
than something to look up. Used by ``kube.client``; ``services`` pass these values in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sovereign.api import API_VERSION, KIND, PLURAL


@dataclass(frozen=True)
class ResourceType:
    """One kind: its apiVersion, plural and scope."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, *, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


STACK = ResourceType(API_VERSION, KIND, PLURAL, True)
DEPLOYMENT = ResourceType("apps/v1", "Deployment", "deployments", True)
JOB = ResourceType("batch/v1", "Job", "jobs", True)
SERVICE = ResourceType("v1", "Service", "services", True)
POD = ResourceType("v1", "Pod", "pods", True)
SECRET = ResourceType("v1", "Secret", "secrets", True)
EVENT = ResourceType("v1", "Event", "events", True)
PERSISTENT_VOLUME_CLAIM = ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims", True)
POD_DISRUPTION_BUDGET = ResourceType("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True)
NETWORK_POLICY = ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True)
SCALED_OBJECT = ResourceType("keda.sh/v1alpha1", "ScaledObject", "scaledobjects", True)
POD_MONITOR = ResourceType("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", True)
NODE_POOL = ResourceType("karpenter.sh/v1", "NodePool", "nodepools", False)
NODE = ResourceType("v1", "Node", "nodes", False)
_ADMISSION = "admissionregistration.k8s.io/v1"
MUTATING_POLICY = ResourceType(_ADMISSION, "MutatingAdmissionPolicy", "mutatingadmissionpolicies", False)
MUTATING_POLICY_BINDING = ResourceType(_ADMISSION, "MutatingAdmissionPolicyBinding",
                                       "mutatingadmissionpolicybindings", False)
VALIDATING_POLICY = ResourceType(_ADMISSION, "ValidatingAdmissionPolicy", "validatingadmissionpolicies", False)
VALIDATING_POLICY_BINDING = ResourceType(_ADMISSION, "ValidatingAdmissionPolicyBinding",
                                         "validatingadmissionpolicybindings", False)

KNOWN = (
    STACK, DEPLOYMENT, JOB, SERVICE, POD, SECRET, EVENT, PERSISTENT_VOLUME_CLAIM, POD_DISRUPTION_BUDGET,
    NETWORK_POLICY, SCALED_OBJECT, POD_MONITOR, NODE_POOL, NODE, MUTATING_POLICY, MUTATING_POLICY_BINDING,
    VALIDATING_POLICY, VALIDATING_POLICY_BINDING,
)  # fmt: skip
_BY_KIND = {(kind.api_version, kind.kind): kind for kind in KNOWN}


def resource_type(obj: Mapping[str, Any]) -> ResourceType:
    """The resource type of a manifest; ``KeyError`` for a kind the operator never writes."""
    return _BY_KIND[(obj["apiVersion"], obj["kind"])]
