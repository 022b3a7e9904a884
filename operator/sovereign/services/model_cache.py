"""The stack's model caches as the reconciler sees them: can the cluster provide them, how far are they.

Two inputs of a pass, both folded into ``ClusterFacts`` before the stack is rendered:

- ``with_cache_checks``: each model's ``cache.layout`` against the cluster's StorageClasses
  (``policy.model_cache``); a model whose SharedVolume cache the cluster cannot provide is held
  back, its Deployment at zero replicas, with the policy's message in ``ModelsReady``.
- ``observe_caches``: each SharedVolume cache's loader Job among the stack's children: filling
  (with the loader's last progress line, from the end of its log), filled or failed, and, from
  its pods' termination messages, what the loader reported (files, bytes, bytes downloaded,
  verified) or, when it failed, the end of its log. One list of the stack's cache pods per pass,
  and only for a stack with a shared cache; one log read per cache being filled.

Called by ``services.reconcile``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sovereign.api import CacheLayout, SovereignStack
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.resources import POD
from sovereign.policy.model_cache import check_cache
from sovereign.render import names
from sovereign.render.cache import cache_name, copies_to_cache
from sovereign.render.facts import CacheFill, ClusterFacts, FillState, Hold
from sovereign.render.names import Component, ObjectKey

Manifest = Mapping[str, Any]

#: What the loader prints before its figures every few seconds (``cli.fetch_model``), and how
#: much of its log is read to find the last such line.
PROGRESS = "progress: "
LOG_TAIL_LINES = 20
LOADER_CONTAINER = "fetch-model"


def with_cache_checks(facts: ClusterFacts, *, stack: SovereignStack) -> ClusterFacts:
    """``facts`` with the models whose cache the cluster cannot provide held back; unchanged when
    the StorageClasses are not known."""
    if facts.storage_classes is None:
        return facts
    held = dict(facts.held_back)
    for index, model in enumerate(stack.spec.models):
        if model.name in held or not copies_to_cache(stack=stack, model=model):
            continue
        decision = check_cache(model=model, field=f"spec.models[{index}].cache", storage_classes=facts.storage_classes)
        if not decision.ok:
            held[model.name] = Hold(decision.reason, decision.message)
    return replace(facts, held_back=held)


def observe_caches(*, kube: Kube, stack: SovereignStack,
                   children: Mapping[ObjectKey, Manifest]) -> dict[str, CacheFill]:
    """Each SharedVolume model's current cache, by model name."""
    namespace = names.stack_namespace(stack)
    shared = [model for model in stack.spec.models
              if model.cache.layout is CacheLayout.SHARED_VOLUME and copies_to_cache(stack=stack, model=model)]
    if not shared:
        return {}
    jobs = {model.name: (cache_name(stack=stack, model=model), children.get(ObjectKey("batch", "Job", namespace,
                                                                           cache_name(stack=stack, model=model))))
            for model in shared}
    pods: list[Manifest] = []
    if any(job is not None for _, job in jobs.values()):
        selector = ",".join(f"{key}={value}" for key, value in {
            names.STACK_LABEL: names.stack_name(stack), names.COMPONENT_LABEL: Component.MODEL_CACHE.value}.items())
        pods = kube.list(POD, namespace=namespace, selector=selector)
    fills = {}
    for model, (name, job) in jobs.items():
        fill = fill_of(name=name, job=job, pods=pods)
        running = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == name
                   and (p.get("status") or {}).get("phase") == "Running"]
        if fill.state is FillState.FILLING and running:
            tail = _log_tail(kube, namespace, running[-1])
            fill = replace(fill, message=with_progress(message=fill.message, log=tail))
        fills[model] = fill
    return fills


def with_progress(*, message: str, log: str) -> str:
    """``message`` with the loader's last progress line from ``log`` (``progress: 412.0 MiB of
    1.0 GiB (40%), 85 MB/s, ETA 7s``), when it printed one."""
    lines = [line for line in log.splitlines() if PROGRESS in line]
    return f"{message}: {lines[-1][lines[-1].index(PROGRESS):].strip()}" if lines else message


def _log_tail(kube: Kube, namespace: str, pod: Manifest) -> str:
    """The end of a running loader's log; empty when it cannot be read (progress is a nicety:
    the fill's state comes from the Job)."""
    try:
        return kube.pod_log(namespace=namespace, name=pod["metadata"]["name"], container=LOADER_CONTAINER,
                            tail_lines=LOG_TAIL_LINES)
    except errors.KubeError:
        return ""


def fill_of(*, name: str, job: Manifest | None, pods: list[Manifest]) -> CacheFill:
    """A cache's state from its Job and the Job's pods (any others in ``pods`` are ignored)."""
    if job is None:
        return CacheFill(name=name, state=FillState.FILLING, message=f"loader Job {name} is being created")
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    started = _time(status.get("startTime"))
    mine = sorted((p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == name),
                  key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if "Complete" in conditions or status.get("succeeded"):
        report = next((r for r in map(_report, reversed(mine)) if r is not None), {})
        return CacheFill(name=name, state=FillState.FILLED, started=started,
                         completed=_time(status.get("completionTime")), report=report)
    if "Failed" in conditions:
        why = conditions["Failed"].get("message") or conditions["Failed"].get("reason") or "failed"
        last = _last_words(mine[-1]) if mine else ""
        return CacheFill(name=name, state=FillState.FAILED, started=started,
                         message=f"loader Job {name} failed ({why})" + (f": {last}" if last else ""))
    attempts = status.get("failed", 0)
    again = f", attempt {attempts + 1}" if attempts else ""
    return CacheFill(name=name, state=FillState.FILLING, started=started,
                     message=f"loader Job {name} {'running' if status.get('active') else 'starting'}{again}")


def _terminated(pod: Manifest) -> Mapping[str, Any]:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return {}


def _report(pod: Manifest) -> dict[str, Any] | None:
    """The loader's report in a succeeded pod's termination message."""
    terminated = _terminated(pod)
    if terminated.get("exitCode") != 0:
        return None
    try:
        report = json.loads(terminated.get("message") or "")
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _last_words(pod: Manifest) -> str:
    """The last line of a failed loader's termination message (the end of its log)."""
    lines = [line.strip() for line in (_terminated(pod).get("message") or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
