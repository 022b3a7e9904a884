"""What the builders know about the cluster and the operator's own installation.

``ClusterFacts`` is the second input of every builder besides the stack: the nodes (for pools of
existing nodes, which are chosen by label), the operator's own image (it runs the model loader
as an init container) and the Prometheus the autoscaler asks. Frozen plain values, so a render
is a pure function of (stack, facts). Built by ``services.facts`` from the live cluster (or from
Node manifests in a file, for ``sovereign render --facts``); builders only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sovereign import __version__

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
    #: Allocatable ``nvidia.com/gpu``.
    gpus: int = 0
    #: Status of the node's ``GPUHealthy`` condition (set by the node agent); None when absent.
    gpu_healthy: str | None = None
    gpu_health_reason: str = ""
    #: GPUs the node agent reports unhealthy.
    unhealthy_gpus: int = 0

    def label(self, key: str) -> str | None:
        return self.labels.get(key)


@dataclass(frozen=True)
class ClusterFacts:
    """The cluster as the builders see it; the defaults describe an empty cluster."""

    nodes: tuple[NodeFacts, ...] = ()
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    prometheus_url: str = DEFAULT_PROMETHEUS_URL

    def node(self, name: str) -> NodeFacts | None:
        return next((node for node in self.nodes if node.name == name), None)
