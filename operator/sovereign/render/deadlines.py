"""How long a model's replicas may take to copy and load their weights, from the weights' size.

The windows the operator renders grow with the model: a 400 GB model is not killed by a window
made for 15 GB. From the weights' largest size, ``cache.size`` (the volume that must hold them),
and the model's ``weightsThroughput`` (the slowest rate a replica is expected to copy, then load at):

- the copy: ``COPY_BASE_SECONDS`` + size / throughput;
- the load: ``startupTimeoutSeconds`` when set, else ``LOAD_BASE_SECONDS`` + size / throughput
  (for vLLM's streamer, which loads straight from the bucket, that is the transfer itself);
- the rollout (``progressDeadlineSeconds``): the load, plus the copy when the replica's own
  init container copies (not from a volume store, not from a shared cache a Job fills first,
  not when streaming).

Only the spec sizes the windows, never what the store check read in the bucket: ``sovereign
render`` must print exactly what the operator applies (a GitOps preview is the truth), and an
offline render cannot read the bucket. ``cache.size`` is an upper bound, so a window made from
it is never too short.

Pure; called by ``render.inference`` (the Deployment's deadline and startup probes) and meant for
whatever else copies a model's weights (a cache-filling Job's ``activeDeadlineSeconds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sovereign.api import CacheLayout, ModelSpec, SovereignStack, parse_quantity
from sovereign.api.models import COPY_BASE_SECONDS, LOAD_BASE_SECONDS, LoadFormat

#: Kubernetes keeps these windows in int32 fields.
_MOST_SECONDS = 2**31 - 1


@dataclass(frozen=True)
class Windows:
    """A model's windows, in seconds, and the size they were derived from."""

    weights_bytes: int
    copy_seconds: int
    load_seconds: int
    #: Whether each replica copies the weights itself before loading them (its init container).
    copies_in_pod: bool

    @property
    def rollout_seconds(self) -> int:
        return min(_MOST_SECONDS, (self.copy_seconds if self.copies_in_pod else 0) + self.load_seconds)


def model_windows(*, stack: SovereignStack, model: ModelSpec) -> Windows:
    """The copy, load and rollout windows of ``model``'s replicas."""
    size = int(parse_quantity(model.cache.size))
    rate = parse_quantity(model.weights_throughput)
    transfer = math.ceil(size / rate)
    store = next(s for s in stack.spec.data_stores if s.name == model.source.data_store)
    copies_in_pod = (store.s3 is not None and model.cache.layout is not CacheLayout.SHARED_VOLUME
                     and model.load_format is not LoadFormat.RUNAI_STREAMER)
    load = (model.startup_timeout_seconds if model.startup_timeout_seconds is not None
            else min(_MOST_SECONDS, LOAD_BASE_SECONDS + transfer))
    return Windows(weights_bytes=size, copy_seconds=min(_MOST_SECONDS, COPY_BASE_SECONDS + transfer),
                   load_seconds=load, copies_in_pod=copies_in_pod)
