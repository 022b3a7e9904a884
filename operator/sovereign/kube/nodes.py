"""Kubernetes I/O for the GPU health of a node: condition, taint, label, annotation and Events.

The node agent (``services.node_agent``) writes its own node through ``publish_gpu_health`` and
``emit_node_event``; the operator will read what it wrote through the names below and
``GpuHealthRecord.from_node``. What lands on a node:

- condition ``GPUHealthy`` in ``status.conditions``: True (all GPUs healthy, or only Degraded),
  False (some GPU Unhealthy), Unknown (NVML unavailable); reason ``<fault>OnGPU<index>``, e.g.
  ``Xid79OnGPU3``; the message names every GPU that is not healthy, by index and UUID;
- taint ``sovereign.ai/gpu-unhealthy=<fault>:NoSchedule`` (``NoExecute`` for fatal faults when the
  agent is configured so) while some GPU is Unhealthy;
- label ``sovereign.ai/gpu-health`` = Healthy | Degraded | Unhealthy | Unknown (for selectors);
- annotation ``sovereign.ai/gpu-health``: JSON ``GpuHealthRecord`` with every GPU's verdict (for
  indexes: how many GPUs of the node are usable, which UUIDs are not).

Writes happen only when something differs from the live node: one merge patch of metadata and
taints (guarded by resourceVersion, since the taint list is replaced whole) and one strategic
merge patch of ``status.conditions`` (merged by type, so the kubelet's or KWOK's own conditions
are untouched). API failures become the typed errors below.

``agent_access_manifests`` is the minimal RBAC the agent needs, plus a ValidatingAdmissionPolicy
that limits it to its own node (RBAC cannot name "the node this pod runs on"); the Helm chart
uses them. ``api_client`` is the client factory of the agent; it lives here until kube/ has a
shared one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger(__name__)

T = TypeVar("T")

GPU_HEALTHY_CONDITION = "GPUHealthy"
GPU_UNHEALTHY_TAINT_KEY = "sovereign.ai/gpu-unhealthy"
GPU_HEALTH_LABEL = "sovereign.ai/gpu-health"
GPU_HEALTH_ANNOTATION = "sovereign.ai/gpu-health"
EVENT_SOURCE = "sovereign-gpu-agent"
# Events about cluster-scoped Nodes live in "default", as the kubelet's do.
EVENTS_NAMESPACE = "default"
# The ServiceAccount token claim (Kubernetes >= 1.32) naming the node of the pod it is bound to.
NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"

TaintEffect = Literal["NoSchedule", "NoExecute"]


class NodeError(RuntimeError):
    """A node could not be read or written; ``node`` names it, the message says what to do."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class NodeNotFound(NodeError):
    """The node does not exist (wrong --node / NODE_NAME?)."""


class NodeForbidden(NodeError):
    """RBAC or the own-node admission policy refused the request."""


class NodeConflict(NodeError):
    """The node kept changing under us; the next poll tries again."""


class ApiUnavailable(NodeError):
    """The API server could not be reached or answered with a server error."""


class GpuRecord(BaseModel):
    """One GPU's verdict as stored in the annotation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    index: int
    uuid: str
    state: str
    reason: str
    message: str
    fatal: bool = False
    # What a restarted agent needs to carry on: XIDs held until a reset or reboot, resets seen
    # since boot (the remediation cap) and the XID that made the device plugin withdraw the GPU.
    held_xids: tuple[int, ...] = ()
    resets: int = 0
    device_plugin_xid: int | None = None


class GpuHealthRecord(BaseModel):
    """The ``sovereign.ai/gpu-health`` annotation: the node's state and every GPU's verdict.

    ``boot_id`` is the node's ``status.nodeInfo.bootID`` when the record was written: an agent
    that starts under another boot ID knows the node rebooted, which clears every held fault.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: str
    healthy: int
    total: int
    gpus: tuple[GpuRecord, ...] = ()
    boot_id: str = ""

    def to_annotation(self) -> str:
        # Compact and key-sorted: the same health always gives the same text, so no needless write.
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> GpuHealthRecord | None:
        """The record on a node (a dict as the API returns it); None if absent or unreadable."""
        text = ((node.get("metadata") or {}).get("annotations") or {}).get(GPU_HEALTH_ANNOTATION)
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            log.warning("ignoring unreadable %s annotation: %s", GPU_HEALTH_ANNOTATION, err)
            return None


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class Taint:
    value: str
    effect: TaintEffect


@dataclass(frozen=True)
class GpuNodeMarks:
    """Everything the agent wants on its node. ``record``/``taint`` None with ``known=False``
    (NVML unavailable) leaves the annotation and taint as they are: nothing new is known."""

    condition: Condition
    label: str
    record: GpuHealthRecord | None
    taint: Taint | None
    known: bool = True


@dataclass(frozen=True)
class PublishResult:
    metadata_written: bool
    status_written: bool


def read_node(api: client.ApiClient, *, name: str) -> dict[str, Any]:
    """The node as a plain dict (API field names)."""
    node = _call(name, "read", lambda: client.CoreV1Api(api).read_node(name))
    return api.sanitize_for_serialization(node)


def publish_gpu_health(api: client.ApiClient, *, node_name: str, marks: GpuNodeMarks,
                       now: datetime | None = None, attempts: int = 3) -> PublishResult:
    """Make the node carry ``marks``, writing only what differs from the live node."""
    now = now or datetime.now(UTC)
    for attempt in range(attempts):
        node = read_node(api, name=node_name)
        patch = _metadata_patch(node, marks, now)
        if patch is None:
            metadata_written = False
            break
        try:
            _call(node_name, "patch", lambda: client.CoreV1Api(api).patch_node(
                node_name, patch, _content_type="application/merge-patch+json"))
            metadata_written = True
            break
        except NodeConflict:
            # Someone else changed the node (another taint, a label): read it again and redo.
            log.info("node %s changed while patching its GPU health (attempt %d); retrying",
                     node_name, attempt + 1)
    else:
        raise NodeConflict(node_name, f"node {node_name} kept changing during {attempts} "
                                      "attempts to patch its GPU health; will retry next poll")
    condition = _condition_patch(node, marks.condition, now)
    if condition is not None:
        _call(node_name, "patch status of", lambda: client.CoreV1Api(api).patch_node_status(
            node_name, {"status": {"conditions": [condition]}},
            _content_type="application/strategic-merge-patch+json"))
    return PublishResult(metadata_written=metadata_written, status_written=condition is not None)


def emit_node_event(api: client.ApiClient, *, node_name: str, reason: str, message: str,
                    warning: bool, now: datetime | None = None) -> None:
    """Record a core/v1 Event about the node (what ``kubectl describe node`` lists)."""
    now = now or datetime.now(UTC)
    stamp = _timestamp(now)
    body = {
        "metadata": {"name": f"{node_name}.{time.time_ns():x}", "namespace": EVENTS_NAMESPACE},
        # uid = node name, as the kubelet does: `kubectl describe node` searches events that way.
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node_name,
                           "uid": node_name},
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": {"component": EVENT_SOURCE, "host": node_name},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": node_name,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    _call(node_name, "record an event about", lambda: client.CoreV1Api(api)
          .create_namespaced_event(EVENTS_NAMESPACE, body))


def agent_access_manifests(*, name: str, service_account: str,
                           namespace: str) -> list[dict[str, Any]]:
    """The RBAC objects and own-node admission policy the agent's ServiceAccount needs.

    RBAC grants: get and patch nodes, patch nodes/status (cluster-wide, the only way RBAC can
    grant node access), create Events in ``default``. The ValidatingAdmissionPolicy then denies
    any node update by that ServiceAccount unless the node is the one named in its token (the
    pod-bound token's node-name claim) and every taint other than the agent's is unchanged.
    """
    user = f"system:serviceaccount:{namespace}:{service_account}"
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    claim = f"request.userInfo.extra[{json.dumps(NODE_NAME_CLAIM)}]"
    others = f"filter(t, t.key != {json.dumps(GPU_UNHEALTHY_TAINT_KEY)})"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
                   {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": name},
         "subjects": [subject]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": EVENTS_NAMESPACE},
         "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": EVENTS_NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [subject]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {
             "failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                 "resources": ["nodes", "nodes/status"]}]},
             "matchConditions": [{"name": "is-gpu-agent",
                                  "expression": f"request.userInfo.username == '{user}'"}],
             "validations": [
                 {"expression": f"{json.dumps(NODE_NAME_CLAIM)} in request.userInfo.extra && "
                                f"object.metadata.name in {claim}",
                  "message": "the GPU agent may only change the node its own pod runs on",
                  "reason": "Forbidden"},
                 {"expression": f"object.spec.?taints.orValue([]).{others} == "
                                f"oldObject.spec.?taints.orValue([]).{others}",
                  "message": f"the GPU agent may only change the {GPU_UNHEALTHY_TAINT_KEY} taint",
                  "reason": "Forbidden"},
             ]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"]}},
    ]


# -- internals ----------------------------------------------------------------------------------

def _metadata_patch(node: dict[str, Any], marks: GpuNodeMarks,
                    now: datetime) -> dict[str, Any] | None:
    metadata = node.get("metadata") or {}
    patch: dict[str, Any] = {}
    if (metadata.get("labels") or {}).get(GPU_HEALTH_LABEL) != marks.label:
        patch.setdefault("metadata", {}).setdefault("labels", {})[GPU_HEALTH_LABEL] = marks.label
    if marks.known:
        text = marks.record.to_annotation() if marks.record else None
        if (metadata.get("annotations") or {}).get(GPU_HEALTH_ANNOTATION) != text:
            patch.setdefault("metadata", {}).setdefault("annotations", {})[
                GPU_HEALTH_ANNOTATION] = text
        taints = (node.get("spec") or {}).get("taints") or []
        ours = [t for t in taints if t.get("key") == GPU_UNHEALTHY_TAINT_KEY]
        wanted = [] if marks.taint is None else [
            {"key": GPU_UNHEALTHY_TAINT_KEY, "value": marks.taint.value,
             "effect": marks.taint.effect}]
        if [(t.get("value"), t.get("effect")) for t in ours] != [
                (t["value"], t["effect"]) for t in wanted]:
            if wanted and wanted[0]["effect"] == "NoExecute":
                # Eviction timers (tolerationSeconds) count from timeAdded, as for kubectl taint.
                wanted[0]["timeAdded"] = _timestamp(now)
            others = [t for t in taints if t.get("key") != GPU_UNHEALTHY_TAINT_KEY]
            patch["spec"] = {"taints": others + wanted}
    if not patch:
        return None
    # The taint list is replaced whole, so only on top of exactly the version we read.
    patch.setdefault("metadata", {})["resourceVersion"] = metadata.get("resourceVersion")
    return patch


def _condition_patch(node: dict[str, Any], wanted: Condition,
                     now: datetime) -> dict[str, Any] | None:
    conditions = (node.get("status") or {}).get("conditions") or []
    current = next((c for c in conditions if c.get("type") == GPU_HEALTHY_CONDITION), None)
    if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            wanted.status, wanted.reason, wanted.message):
        return None
    stamp = _timestamp(now)
    transition = (current.get("lastTransitionTime")
                  if current and current.get("status") == wanted.status else stamp)
    return {"type": GPU_HEALTHY_CONDITION, "status": wanted.status, "reason": wanted.reason,
            "message": wanted.message, "lastHeartbeatTime": stamp,
            "lastTransitionTime": transition}


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _call(node: str, action: str, request: Callable[[], T]) -> T:
    try:
        return request()
    except ApiException as err:
        detail = _api_message(err)
        if err.status == 404:
            raise NodeNotFound(node, f"node {node} not found; the agent's --node (NODE_NAME) "
                                     "must be the name of the node it runs on") from err
        if err.status in (401, 403):
            raise NodeForbidden(node, f"not allowed to {action} node {node}: {detail}; grant the "
                                      "agent's ServiceAccount the rules of "
                                      "sovereign.kube.nodes.agent_access_manifests") from err
        if err.status == 409:
            raise NodeConflict(node, f"node {node} changed while we wrote it") from err
        raise ApiUnavailable(node, f"could not {action} node {node}: HTTP {err.status} "
                                   f"{detail}") from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise ApiUnavailable(node, f"could not {action} node {node}: API server unreachable "
                                   f"({err})") from err


def _api_message(err: ApiException) -> str:
    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)
