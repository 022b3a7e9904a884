"""Kopf handlers of SovereignStack: thin entry points into ``services.reconcile``.

``install(registry, kube=..., config=...)`` registers, on one Kopf registry:

- the operator's Kopf settings (startup): progress and the last handled spec kept in
  ``sovereign.ai/`` annotations, finalizer ``sovereign.ai/finalizer``, only warnings posted as
  Events (the reconciler posts its own on condition transitions), and a login whose HTTP
  session identifies as ``sovereign-operator/<version>``;
- indexes of all nodes (``cluster_nodes``) and StorageClasses (``cluster_storage_classes``, which
  a shared model cache is checked against), so a pass reads its facts from memory;
- create/update/resume: one reconcile pass; delete: ``finalize`` (cluster-scoped effects);
- a timer every ``resync_seconds``: a reconcile pass (repairs deleted children; reads only when
  nothing changed);
- events of the stack's Deployments, cache loader Jobs, claims and NodePools: a reconcile pass of their stack, so
  status follows readiness without waiting for the timer;
- a daemon per stack checking every ``gpu_check_seconds`` (``services.gpu_reaction``), from the
  node index alone: a reconcile pass when the GPU health of the stack's pool nodes changed, and
  evictions of its inference pods from nodes with a fatal GPU fault.

Kopf adds the finalizer in a cycle of its own before any handler runs, and every pass starts
only once the stack carries it, so no side effect happens without it. Passes of one stack never
overlap (a lock per stack: handlers run in Kopf's thread pool). Transient API trouble becomes
``kopf.TemporaryError`` with a delay; a 409 Conflict is a quick requeue. A spec that can never
work is not an error here: the service reports it on ``Ready``. Called by ``cli.run``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from sovereign import metrics
from sovereign.api import GROUP, PLURAL, VERSION, ConditionStatus
from sovereign.kube import errors
from sovereign.kube.client import USER_AGENT, Kube
from sovereign.kube.resources import STACK
from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE, DEFAULT_PROMETHEUS_URL, ClusterFacts, NodeFacts
from sovereign.render.names import FINALIZER, OWNER_ANNOTATION, STACK_LABEL
from sovereign.services.facts import node_facts
from sovereign.services.gpu_reaction import GpuReaction
from sovereign.services.reconcile import finalize, reconcile
from sovereign.services.residency_stores import StoreVerdicts

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "sovereign.ai"
CONFLICT_DELAY = 1.0
RETRY_DELAY = 10.0
_STACKS = (GROUP, VERSION, PLURAL)
_CHILDREN = {STACK_LABEL: kopf.PRESENT}


@dataclass(frozen=True)
class OperatorConfig:
    """How the operator runs (from ``sovereign run`` options)."""

    operator_image: str = DEFAULT_OPERATOR_IMAGE
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    resync_seconds: float = 60.0
    #: How often each stack compares the GPU health of its nodes (in memory) with what it last showed.
    gpu_check_seconds: float = 2.0


@dataclass(frozen=True)
class _Indexes:
    """The Kopf indexes a pass builds its facts from."""

    nodes: kopf.Index[None, NodeFacts]
    storage_classes: kopf.Index[str, dict]


class _StackPasses:
    """One thread at a time works on a stack, and requests for a pass never wait for one.

    ``hold`` serialises all work on a stack (passes, evictions, finalization). ``run`` is for
    passes: one asked for while another runs (a child's event, the resync timer, an update)
    returns at once and makes the running pass go round once more, reading the stack afresh.
    Waiting instead would park one thread of Kopf's small executor per event while the pass's
    own writes wait for the admission webhooks, which need a thread of that same executor: a
    deadlock broken only by the apiserver's webhook timeout, on every pass.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        # Stacks with a pass in progress -> whether another pass was asked for meanwhile.
        self._again: dict[tuple[str, str], bool] = {}

    @contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def run(self, namespace: str, name: str, work: Callable[[], None]) -> None:
        key = (namespace, name)
        with self._guard:
            if key in self._again:
                self._again[key] = True
                return
            self._again[key] = False
        try:
            while True:
                with self.hold(namespace, name):
                    work()
                with self._guard:
                    if not self._again[key]:
                        del self._again[key]
                        return
                    self._again[key] = False
        except BaseException:
            with self._guard:
                self._again.pop(key, None)
            raise

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted stack's lock, so the table does not grow with every stack ever seen."""
        with self._guard:
            if (namespace, name) not in self._again:
                self._locks.pop((namespace, name), None)


def install(registry: kopf.OperatorRegistry, *, kube: Kube, config: OperatorConfig) -> None:
    """Register every handler of the operator on ``registry``."""
    passes = _StackPasses()
    # S3 stores are verified again at most once per resync, however many events trigger passes.
    stores = StoreVerdicts(recheck_seconds=config.resync_seconds)

    def facts(indexes: _Indexes) -> ClusterFacts:
        nodes = sorted(indexes.nodes.get(None, []), key=lambda node: node.name)
        classes = {name: storage_class for name, entries in indexes.storage_classes.items()
                   for storage_class in entries}
        return ClusterFacts(nodes=tuple(nodes), operator_image=config.operator_image,
                            prometheus_url=config.prometheus_url, storage_classes=classes)

    def run_pass(namespace: str, name: str, indexes: _Indexes) -> None:
        passes.run(namespace, name, lambda: one_pass(namespace, name, indexes))

    def one_pass(namespace: str, name: str, indexes: _Indexes) -> None:
        with _retry_on_trouble(namespace, name):
            # Read afresh under the lock: the body Kopf or an event handed over may predate the
            # status the previous pass wrote, and comparing with it would write again.
            body = kube.get(STACK, name=name, namespace=namespace)
            if body is None or FINALIZER not in (body["metadata"].get("finalizers") or []):
                return  # gone, or Kopf has yet to add the finalizer: nothing may happen before it
            outcome = reconcile(kube=kube, body=body, facts=facts(indexes), stores=stores)
        # The module's logger, not Kopf's per-object one: Kopf would post these lines as Events on
        # every pass, and the reconciler already posts one when a condition changes.
        if outcome.rejected:
            log.warning("stack %s/%s: rejected by the apiserver: %s", namespace, name, "; ".join(outcome.rejected))
        if outcome.applied or outcome.pruned:
            log.info("stack %s/%s: applied %d object(s), pruned %d; Ready=%s", namespace, name,
                     len(outcome.applied), len(outcome.pruned), outcome.ready)

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
        # Kopf's own "handler succeeded" Events would be writes on every resume; problems only.
        settings.posting.enabled = True
        settings.posting.level = logging.WARNING

    @kopf.on.login(id="login", registry=registry)
    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        info = kopf.login_via_client(**kwargs)
        if info is None:
            return None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": USER_AGENT},
        )
        return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                                   expiration=info.expiration, aiohttp_session=session)

    @kopf.index("", "v1", "nodes", id="cluster_nodes", registry=registry)
    def cluster_nodes(body: kopf.Body, **_: Any) -> dict[None, NodeFacts]:
        node = node_facts(body)
        if node.gpu is not None and node.gpu.condition is not None:
            metrics.NODE_GPU_HEALTH.labels(node=node.name).set(1 if node.gpu.condition is ConditionStatus.TRUE else 0)
        return {None: node}

    @kopf.index("storage.k8s.io", "v1", "storageclasses", id="cluster_storage_classes", registry=registry)
    def cluster_storage_classes(name: str, body: kopf.Body, **_: Any) -> dict[str, dict]:
        # What a shared model cache's check reads (policy.model_cache): the provisioner, and the
        # default-class and access-modes annotations.
        return {name: {"metadata": {"name": name, "annotations": dict(body["metadata"].get("annotations") or {})},
                       "provisioner": body.get("provisioner", "")}}

    @kopf.on.create(*_STACKS, id="reconcile", registry=registry)
    @kopf.on.update(*_STACKS, id="reconcile", registry=registry)
    @kopf.on.resume(*_STACKS, id="reconcile", registry=registry)
    def reconcile_stack(namespace: str, name: str, cluster_nodes: kopf.Index[None, NodeFacts],
                        cluster_storage_classes: kopf.Index[str, dict], **_: Any) -> None:
        run_pass(namespace, name, _Indexes(cluster_nodes, cluster_storage_classes))

    @kopf.timer(*_STACKS, id="resync", interval=config.resync_seconds, initial_delay=config.resync_seconds,
                registry=registry)
    def resync_stack(namespace: str, name: str, cluster_nodes: kopf.Index[None, NodeFacts],
                     cluster_storage_classes: kopf.Index[str, dict], **_: Any) -> None:
        run_pass(namespace, name, _Indexes(cluster_nodes, cluster_storage_classes))

    def check_gpus(namespace: str, name: str, body: kopf.Body, reaction: GpuReaction,
                   indexes: _Indexes) -> None:
        health = reaction.health(body=body, facts=facts(indexes))
        if health is None:
            return  # an invalid spec: the reconciler reports it
        if reaction.status_due(health):
            run_pass(namespace, name, indexes)
            reaction.status_shown(health)
        if reaction.evictions_due(health, now=time.monotonic()):
            with passes.hold(namespace, name), _retry_on_trouble(namespace, name):
                report = reaction.evict(kube=kube, body=body, health=health, now=time.monotonic())
            if report.evicted or report.blocked or report.failed:
                log.info("stack %s/%s: GPU fault on %s: evicted %s; blocked by a disruption budget %s; failed %s",
                         namespace, name, ", ".join(n.name for n in health.fatal_nodes),
                         ", ".join(report.evicted) or "none", ", ".join(report.blocked) or "none",
                         ", ".join(report.failed) or "none")

    # A daemon rather than a timer: Kopf logs every timer run, and an unchanged stack's check is
    # a look at memory every few seconds, worth no log line. ``body`` is live in a daemon.
    @kopf.daemon(*_STACKS, id="gpu-reaction", registry=registry)
    async def gpu_reaction(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo,
                           cluster_nodes: kopf.Index[None, NodeFacts],
                           cluster_storage_classes: kopf.Index[str, dict], stopped: kopf.DaemonStopped,
                           **_: Any) -> None:
        reaction = memo.setdefault("gpu_reaction", GpuReaction())
        while not stopped:
            await asyncio.to_thread(check_gpus, namespace, name, body, reaction,
                                    _Indexes(cluster_nodes, cluster_storage_classes))
            await stopped.wait(config.gpu_check_seconds)

    @kopf.on.delete(*_STACKS, id="finalize", registry=registry)
    def finalize_stack(body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        with passes.hold(meta["namespace"], meta["name"]), _retry_on_trouble(meta["namespace"], meta["name"]):
            removed = finalize(kube=kube, body=dict(body))
        passes.forget(meta["namespace"], meta["name"])
        metrics.forget_stack(namespace=meta["namespace"], stack=meta["name"])
        stores.forget(namespace=meta["namespace"], name=meta["name"])
        if removed:
            log.info("stack %s/%s deleted: removed %s", meta["namespace"], meta["name"], ", ".join(map(str, removed)))

    @kopf.on.event("apps", "v1", "deployments", id="deployment", labels=_CHILDREN, registry=registry)
    @kopf.on.event("batch", "v1", "jobs", id="job", labels=_CHILDREN, registry=registry)
    @kopf.on.event("", "v1", "persistentvolumeclaims", id="claim", labels=_CHILDREN, registry=registry)
    @kopf.on.event("karpenter.sh", "v1", "nodepools", id="nodepool", labels=_CHILDREN, registry=registry)
    def child_changed(type: str | None, body: kopf.Body, cluster_nodes: kopf.Index[None, NodeFacts],
                      cluster_storage_classes: kopf.Index[str, dict], **_: Any) -> None:
        if type is None:
            return  # the initial listing: resuming the stacks covers startup
        meta = body["metadata"]
        owner = (meta.get("annotations") or {}).get(OWNER_ANNOTATION, "")
        namespace = meta.get("namespace") or owner.partition("/")[0]
        if namespace:
            run_pass(namespace, meta["labels"][STACK_LABEL], _Indexes(cluster_nodes, cluster_storage_classes))


@contextmanager
def _retry_on_trouble(namespace: str, name: str) -> Iterator[None]:
    """Map passing API trouble to Kopf retries: a conflict soon, an outage or RBAC gap later."""
    try:
        yield
    except (errors.Conflict, errors.Unavailable, errors.Forbidden) as err:
        metrics.RECONCILE_ERRORS.labels(namespace=namespace, stack=name, reason=type(err).__name__).inc()
        delay = CONFLICT_DELAY if isinstance(err, errors.Conflict) else RETRY_DELAY
        raise kopf.TemporaryError(f"{err}; trying again in {delay:g}s", delay=delay) from err
