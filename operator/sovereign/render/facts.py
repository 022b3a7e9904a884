"""What the builders know about the cluster and the operator's own installation.

``ClusterFacts`` is the second input of every builder besides the stack: the nodes (for pools of
existing nodes, which are chosen by label), the operator's own image (it runs the model loader
as an init container), the Prometheus the autoscaler asks, the StorageClasses (which a shared
model cache needs), whether PodMonitors are served, and, for one stack, its S3 stores as verified against their buckets, the
workloads a failed store holds back and the state of its shared model caches. Frozen plain
values, so a render is a pure function of (stack, facts). Built by ``services.facts`` from the
live cluster (or from Node manifests in a file, for ``sovereign render --facts``), the store
verdicts added by ``services.reconcile``; builders only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from sovereign import __version__
from sovereign.api import DataStoreStatus
from sovereign.policy.rollout import RolloutDecision
from sovereign.policy.stack_gpu_health import NodeGpus

#: The operator's own image, pinned to this release: it carries ``sovereign fetch-model``.
DEFAULT_OPERATOR_IMAGE = f"ghcr.io/sovereign-ai/sovereign-operator:{__version__}"
#: Where KEDA's Prometheus trigger asks for vLLM's queue depth, unless the operator is told otherwise.
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass(frozen=True)
class NodeFacts:
    """One node, reduced to what pools and status need."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The ``sovereign.ai/owner`` annotation: the stack (``<namespace>/<name>``) that claimed it.
    owner: str | None = None
    ready: bool = False
    #: Its GPUs: allocatable count, the node agent's ``GPUHealthy`` condition and every GPU the
    #: agent does not report Healthy (``services.gpu_reaction.node_gpus``); None: not known.
    gpu: NodeGpus | None = None

    def label(self, key: str) -> str | None:
        return self.labels.get(key)


class Hold(NamedTuple):
    """Why a model or application is kept at zero replicas: a CamelCase reason and a message."""

    reason: str
    message: str


class FillState(StrEnum):
    """Where a shared model cache's loader Job is."""

    FILLING = "Filling"
    FILLED = "Filled"
    FAILED = "Failed"


@dataclass(frozen=True)
class CacheFill:
    """A shared model cache as observed: its claim (and Job) name, how far its loader Job is,
    and what the loader reported when it ended (``sovereign fetch-model``'s report file, read
    from the pod's termination message)."""

    name: str
    state: FillState
    #: When the Job started, and when it completed (None while it runs or after it failed).
    started: datetime | None = None
    completed: datetime | None = None
    #: What the loader reported: ``{"files", "bytes", "downloadedBytes", "verified"}``, or the
    #: tail of its log when it failed; empty while it runs.
    report: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class ClusterFacts:
    """The cluster as the builders see it; the defaults describe an empty cluster."""

    nodes: tuple[NodeFacts, ...] = ()
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    #: The stack's S3 stores as verified against their buckets, by store name: the entries of
    #: ``status.dataStores``. Empty when nothing was verified (``sovereign render``).
    data_stores: Mapping[str, DataStoreStatus] = field(default_factory=dict)
    #: Models and applications (by name) a data store that failed its residency checks keeps
    #: from starting: their Deployments get zero replicas and their status says why.
    held_back: Mapping[str, Hold] = field(default_factory=dict)
    #: StorageClasses by name, as the API returns them; None when they are not known (an offline
    #: ``sovereign render``), and then nothing is checked against them.
    storage_classes: Mapping[str, Mapping[str, Any]] | None = None
    #: The stack's shared model caches by model name, as observed; None when not observed (an
    #: offline render), and then every Deployment is rendered as if its cache were filled.
    caches: Mapping[str, CacheFill] | None = None
    #: Where the blue/green rollout of each model with evaluation stands (``policy.rollout``), by
    #: model name; None when not observed (an offline render), and then each such model is
    #: rendered as serving the spec's model.
    rollouts: Mapping[str, RolloutDecision] | None = None
    #: Whether the cluster serves the Prometheus Operator's PodMonitor: then each model gets one
    #: (``render.monitoring``). True unless the operator found the CRD missing, or ``sovereign
    #: render`` was told so, as the chart's own monitoring assumes the Prometheus Operator.
    pod_monitors: bool = True

    def node(self, name: str) -> NodeFacts | None:
        return next((node for node in self.nodes if node.name == name), None)
