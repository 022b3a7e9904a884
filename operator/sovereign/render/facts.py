"""What the builders know about the cluster and the operator's own installation.

``ClusterFacts`` is the second input of every builder besides the stack: the nodes (for pools of
existing nodes, which are chosen by label), the operator's own image (it runs the model loader
as an init container), the Prometheus the autoscaler asks and, for one stack, its S3 stores as
verified against their buckets and the workloads a failed store holds back. Frozen plain
values, so a render is a pure function of (stack, facts). Built by ``services.facts`` from the
live cluster (or from Node manifests in a file, for ``sovereign render --facts``), the store
verdicts added by ``services.reconcile``; builders only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from sovereign import __version__
from sovereign.api import DataStoreStatus
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

    def node(self, name: str) -> NodeFacts | None:
        return next((node for node in self.nodes if node.name == name), None)
