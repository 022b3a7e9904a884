"""Residency rules for everything in a governed namespace: pods, volumes, Services and stacks.

A stack's ``spec.residency`` promises that its workloads and data stay in the allowed regions
and that nothing is reachable from outside except through declared routes. These pure functions
judge one object against that promise and return a ``Decision`` (ok, CamelCase reason, message);
the reason is the rule's name, and a failing message names the object, the rule and the allowed
regions, because the same text is what a denied ``kubectl apply`` prints, what
``status.violations`` records and what the evidence report shows. Called by
``services.admission`` (the webhooks: judge the object being admitted) and
``services.residency_audit`` (the audit timer: judge what exists and where it runs).

Where things are is read from topology labels: a region key (``topology.kubernetes.io/region``
or any ``<prefix>/region``) names a region; a zone key (``topology.kubernetes.io/zone``, CSI keys
such as ``topology.ebs.csi.aws.com/zone``) names a zone, mapped to its region through the nodes
(``Topology``) or, for a zone no node has yet (Karpenter launches nodes on demand), through the
cloud convention that a zone's name starts with its region's; ``kubernetes.io/hostname`` and a
pod's ``nodeName`` name a node. A place that cannot be mapped counts as outside: a sovereignty
control must not assume the best about what it cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sovereign.api import Enforcement, Residency, SovereignStack
from sovereign.policy.residency_store import Decision
from sovereign.render.names import REGION_LABEL, STACK_LABEL

Manifest = Mapping[str, Any]

HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"

# Reasons: the rule each check applies, as conditions, violations, Events and metrics show it.
IN_REGIONS = "InRegions"
POD_OUTSIDE_REGIONS = "PodOutsideRegions"
POD_NOT_PINNED = "PodNotPinnedToRegions"
NO_COMMON_REGION = "NoCommonRegion"
VOLUME_OUTSIDE_REGIONS = "VolumeOutsideRegions"
VOLUME_TOPOLOGY_UNKNOWN = "VolumeTopologyUnknown"
STORAGE_CLASS_OUTSIDE_REGIONS = "StorageClassOutsideRegions"
STORAGE_CLASS_NOT_PINNED = "StorageClassNotPinned"
LOAD_BALANCER_NOT_ALLOWED = "LoadBalancerNotAllowed"
NODE_PORT_NOT_ALLOWED = "NodePortNotAllowed"
EXTERNAL_IPS_NOT_ALLOWED = "ExternalIPsNotAllowed"
EXTERNAL_NAME_NOT_ALLOWED = "ExternalNameNotAllowed"
HOST_NAMESPACES_NOT_ALLOWED = "HostNamespacesNotAllowed"
GOVERNANCE_TAMPERED = "GovernanceTampered"
NODE_POOL_OUTSIDE_REGIONS = "NodePoolOutsideRegions"
STORE_FAILED = "DataStoreFailed"


# --- who governs an object ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """The residency rules in force for one object, from the stack(s) that govern it.

    An object labelled ``sovereign.ai/stack=<name>`` of a stack in its namespace answers to that
    stack alone; anything else in a namespace answers to every stack there, so the strictest
    rule wins: the regions all of them allow, enforcement if any enforces, an exposure only if
    all allow it.
    """

    namespace: str
    stacks: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    regions: tuple[str, ...]
    enforce: bool
    allow_load_balancer: bool
    allow_node_port: bool
    allow_host_namespaces: bool = False

    @property
    def governor(self) -> str:
        """Who sets the rules, as messages name it: ``stack ns/a (QA)``."""
        names = ", ".join(f"{self.namespace}/{name}" for name in self.stacks)
        return f"{'stack' if len(self.stacks) == 1 else 'stacks'} {names} ({', '.join(self.jurisdictions)})"

    @property
    def allowed(self) -> str:
        return ", ".join(self.regions) if self.regions else "none (the stacks share no region)"


def scope_for(*, namespace: str, stacks: Mapping[str, Residency], labels: Mapping[str, str] | None) -> Scope | None:
    """The rules for an object with ``labels`` in ``namespace``, whose stacks' residency is
    ``stacks`` (name -> residency); None when no stack governs the namespace."""
    if not stacks:
        return None
    own = (labels or {}).get(STACK_LABEL)
    return _scope(namespace, {own: stacks[own]} if own in stacks else stacks)


def stack_scope(stack: SovereignStack) -> Scope:
    """The rules of one stack for its own spec."""
    return _scope(stack.metadata.namespace or "", {stack.metadata.name or "": stack.spec.residency})


def _scope(namespace: str, stacks: Mapping[str, Residency]) -> Scope:
    names = tuple(sorted(stacks))
    residencies = [stacks[name] for name in names]
    common = set(residencies[0].regions).intersection(*(r.regions for r in residencies[1:]))
    return Scope(
        namespace=namespace,
        stacks=names,
        jurisdictions=tuple(sorted({r.jurisdiction for r in residencies})),
        regions=tuple(sorted(common)),
        enforce=any(r.enforcement is Enforcement.ENFORCE for r in residencies),
        allow_load_balancer=all(r.exposure.allow_load_balancer for r in residencies),
        allow_node_port=all(r.exposure.allow_node_port for r in residencies),
        allow_host_namespaces=all(r.egress.allow_host_namespaces for r in residencies),
    )


# --- where things are --------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """Regions of the cluster's nodes and zones, as their labels say."""

    node_regions: Mapping[str, str] = field(default_factory=dict)
    zone_regions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_nodes(cls, nodes: Iterable[Manifest]) -> Topology:
        node_regions: dict[str, str] = {}
        zone_regions: dict[str, str] = {}
        for node in nodes:
            labels = (node.get("metadata") or {}).get("labels") or {}
            region = labels.get(REGION_LABEL, "")
            node_regions[node["metadata"]["name"]] = region
            if labels.get(ZONE_LABEL) and region:
                zone_regions[labels[ZONE_LABEL]] = region
        return cls(node_regions=node_regions, zone_regions=zone_regions)

    def region(self, *, key: str, value: str, allowed: Sequence[str]) -> str | None:
        """The region ``key=value`` places something in; None when the key is not a topology key.

        A value that cannot be mapped gives a description of it instead of a region, which no
        allowed list contains.
        """
        kind = _topology_kind(key)
        if kind == "region":
            return value
        if kind == "node":
            return self.node_regions.get(value) or f"an unknown region (node {value})"
        if kind == "zone":
            if value in self.zone_regions:
                return self.zone_regions[value]
            known = sorted({*self.zone_regions.values(), *self.node_regions.values(), *allowed} - {""},
                           key=len, reverse=True)
            return next((region for region in known if value.startswith(region)),
                        f"an unknown region (zone {value})")
        return None


def _topology_kind(key: str) -> str | None:
    if key == HOSTNAME_LABEL:
        return "node"
    name = key.rsplit("/", 1)[-1]
    return name if name in ("region", "zone") else None


@dataclass(frozen=True)
class _Place:
    """Where a set of constraints lets something be: ``regions`` (None: anywhere) and the
    constraints that name a region explicitly, as ``(what, region)`` for messages."""

    regions: frozenset[str] | None
    named: tuple[tuple[str, str], ...] = ()

    def outside(self, allowed: Sequence[str]) -> list[str]:
        return sorted(self.regions - set(allowed)) if self.regions is not None else []


def _intersect(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    return a if b is None else a & b


def _requirement_place(key: str, values: Sequence[str], topology: Topology, allowed: Sequence[str],
                      what: str) -> _Place:
    """Something must be at one of ``key``'s ``values``; a key that is not topological says nothing."""
    if _topology_kind(key) is None:
        return _Place(None)
    regions = [topology.region(key=key, value=value, allowed=allowed) or "" for value in values]
    shown = f"{key}={values[0]}" if len(values) == 1 else f"{key} in ({', '.join(values)})"
    return _Place(frozenset(regions), tuple((f"{what} {shown}", region) for region in regions))


def _term_place(term: Manifest, topology: Topology, allowed: Sequence[str], what: str) -> _Place:
    """A node selector term (or a StorageClass topology term): all of its requirements at once.

    Only ``In`` narrows the place; ``NotIn``, ``Exists`` and the rest leave any region open.
    ``matchFields`` on ``metadata.name`` names nodes.
    """
    requirements = [(e.get("key", ""), e.get("values") or [])
                    for e in [*(term.get("matchExpressions") or []), *(term.get("matchLabelExpressions") or [])]
                    if e.get("operator", "In") == "In"]
    requirements += [(HOSTNAME_LABEL, f.get("values") or []) for f in term.get("matchFields") or []
                     if f.get("key") == "metadata.name" and f.get("operator") == "In"]
    regions: frozenset[str] | None = None
    named: list[tuple[str, str]] = []
    for key, values in requirements:
        place = _requirement_place(key, values, topology, allowed, what)
        regions = _intersect(regions, place.regions)
        named += place.named
    return _Place(regions, tuple(named))


def _terms_place(terms: Sequence[Manifest], topology: Topology, allowed: Sequence[str], what: str) -> _Place:
    """Node selector terms: any one of them (no terms: anywhere)."""
    places = [_term_place(term, topology, allowed, what) for term in terms]
    if not places or any(place.regions is None for place in places):
        regions = None
    else:
        regions = frozenset().union(*(place.regions for place in places))  # type: ignore[misc]
    return _Place(regions, tuple(n for place in places for n in place.named))


def _labels_place(labels: Mapping[str, str], topology: Topology, allowed: Sequence[str], what: str) -> _Place:
    """Labels something must carry (a node selector, a volume's labels): all at once."""
    regions: frozenset[str] | None = None
    named: list[tuple[str, str]] = []
    for key, value in labels.items():
        place = _requirement_place(key, [value], topology, allowed, what)
        regions = _intersect(regions, place.regions)
        named += place.named
    return _Place(regions, tuple(named))


def _required_terms(affinity: Manifest | None) -> list[Manifest]:
    node = (affinity or {}).get("nodeAffinity") or {}
    return list((node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [])


def _regions_text(regions: Iterable[str]) -> str:
    return ", ".join(regions)


def failure(*, kind: str, obj: Manifest, rule: str, detail: str, scope: Scope) -> Decision:
    """A failed rule, worded the same for a denial, a violation and the report."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName", "") + "*"
    where = f"{meta.get('namespace') or scope.namespace}/{name}"
    return Decision(False, rule, f"{kind} {where} breaks {rule}: {detail}; the allowed regions of "
                                 f"{scope.governor} are {scope.allowed}")


def _no_common_region(kind: str, obj: Manifest, scope: Scope) -> Decision | None:
    if scope.regions:
        return None
    return failure(kind=kind, obj=obj, rule=NO_COMMON_REGION, scope=scope,
                    detail="the stacks of the namespace allow no region in common, so nothing can be placed; "
                           "label the object sovereign.ai/stack=<name> or align the stacks' regions")


@dataclass(frozen=True)
class Governance:
    """What residency decisions read about the cluster: the stacks' residency by namespace, the
    topology of the nodes and the StorageClasses (by name). Built from the operator's indexes."""

    stacks: Mapping[str, Mapping[str, Residency]] = field(default_factory=dict)
    topology: Topology = field(default_factory=Topology)
    storage_classes: Mapping[str, Manifest] = field(default_factory=dict)

    def scope(self, *, namespace: str, labels: Mapping[str, str] | None) -> Scope | None:
        return scope_for(namespace=namespace, stacks=self.stacks.get(namespace) or {}, labels=labels)

    def storage_class(self, name: str | None) -> Manifest | None:
        """The named class, or the cluster's default one for a claim that names none."""
        return find_storage_class(self.storage_classes, name)


def find_storage_class(storage_classes: Mapping[str, Manifest], name: str | None) -> Manifest | None:
    """The class ``name``, or the cluster's default one (the first by name) when ``name`` is None."""
    if name is not None:
        return storage_classes.get(name)
    defaults = [sc for _, sc in sorted(storage_classes.items())
                if ((sc.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"]
    return defaults[0] if defaults else None


# --- pods --------------------------------------------------------------------------------------


def _pod_place(pod: Manifest, topology: Topology, allowed: Sequence[str]) -> _Place:
    """Where a pod's own constraints let it run: node name, node selector and required affinity."""
    spec = pod.get("spec") or {}
    places = []
    if spec.get("nodeName"):
        region = topology.region(key=HOSTNAME_LABEL, value=spec["nodeName"], allowed=allowed) or ""
        places.append(_Place(frozenset([region]), ((f"nodeName {spec['nodeName']}", region),)))
    places.append(_labels_place(spec.get("nodeSelector") or {}, topology, allowed, "nodeSelector"))
    places.append(_terms_place(_required_terms(spec.get("affinity")), topology, allowed, "node affinity"))
    regions: frozenset[str] | None = None
    for place in places:
        regions = _intersect(regions, place.regions)
    return _Place(regions, tuple(n for place in places for n in place.named))


def check_pod(*, pod: Manifest, scope: Scope, topology: Topology) -> Decision:
    """A pod's scheduling constraints keep it in the allowed regions.

    Any constraint naming a region outside them (``nodeName``, a node selector, a required node
    affinity ``In``) is ``PodOutsideRegions``, even where another constraint would make the pod
    unschedulable: it states an intent to run outside. Constraints that leave it free to run
    anywhere are ``PodNotPinnedToRegions`` (the mutating webhook adds the pin before this runs).
    """
    if (conflict := _no_common_region("Pod", pod, scope)) is not None:
        return conflict
    if (host := check_host_namespaces(pod=pod, scope=scope)) is not None:
        return host
    place = _pod_place(pod, topology, scope.regions)
    outside = [(what, region) for what, region in place.named if region not in scope.regions]
    if outside:
        detail = "; ".join(f"{what} places it in {region}" for what, region in outside)
        return failure(kind="Pod", obj=pod, rule=POD_OUTSIDE_REGIONS, detail=detail, scope=scope)
    if place.regions is None or place.outside(scope.regions):
        return failure(kind="Pod", obj=pod, rule=POD_NOT_PINNED, scope=scope,
                        detail="it may be scheduled outside them: give it a required node affinity "
                               f"{REGION_LABEL} In the allowed regions")
    return Decision(True, IN_REGIONS, f"Pod can only run in {_regions_text(sorted(place.regions))}")


HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


def check_host_namespaces(*, pod: Manifest, scope: Scope) -> Decision | None:
    """A pod in the node's network, PID or IPC namespace escapes the egress NetworkPolicy and the
    pod boundary: ``HostNamespacesNotAllowed`` unless the stacks allow it (None: nothing to say)."""
    spec = pod.get("spec") or {}
    used = [name for name in HOST_NAMESPACES if spec.get(name)]
    if not used or scope.allow_host_namespaces:
        return None
    return failure(kind="Pod", obj=pod, rule=HOST_NAMESPACES_NOT_ALLOWED, scope=scope,
                   detail=f"{', '.join(used)} puts it in the node's own namespaces, outside the egress policy and "
                          "the pod boundary; set spec.residency.egress.allowHostNamespaces to allow it")


def check_pod_placement(*, pod: Manifest, scope: Scope, topology: Topology) -> Decision:
    """Where a pod actually runs: the region of its node once scheduled, else its constraints."""
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return check_pod(pod=pod, scope=scope, topology=topology)
    if (conflict := _no_common_region("Pod", pod, scope)) is not None:
        return conflict
    if (host := check_host_namespaces(pod=pod, scope=scope)) is not None:
        return host
    return check_pod_node(pod=pod, node=node, scope=scope, topology=topology)


def check_pod_node(*, pod: Manifest, node: str, scope: Scope, topology: Topology) -> Decision:
    """The node a pod runs on, names or is bound to lies in the allowed regions (by its region label)."""
    if (conflict := _no_common_region("Pod", pod, scope)) is not None:
        return conflict
    region = topology.region(key=HOSTNAME_LABEL, value=node, allowed=scope.regions) or ""
    if region in scope.regions:
        return Decision(True, IN_REGIONS, f"Pod runs on node {node} in {region}")
    return failure(kind="Pod", obj=pod, rule=POD_OUTSIDE_REGIONS, scope=scope,
                    detail=f"it runs on node {node} in {region or 'no region (the node has no region label)'}")


# --- volumes -----------------------------------------------------------------------------------


def check_storage_class(*, storage_class: Manifest, scope: Scope, topology: Topology,
                        subject: tuple[str, Manifest]) -> Decision:
    """A StorageClass provisions ``subject``'s volumes (a (kind, object) pair) only in the regions.

    ``allowedTopologies`` must stay inside them; a class without it is fine only with
    ``WaitForFirstConsumer``, where the volume is made where its first pod is scheduled (and
    pods are pinned). ``Immediate`` binding without topology lets the provisioner pick any zone.
    """
    kind, obj = subject
    if (conflict := _no_common_region(kind, obj, scope)) is not None:
        return conflict
    name = (storage_class.get("metadata") or {}).get("name", "")
    terms = storage_class.get("allowedTopologies") or []
    if terms:
        place = _terms_place(terms, topology, scope.regions, "allowedTopologies")
        outside = place.outside(scope.regions)
        if place.regions is None or outside:
            where = _regions_text(outside) if outside else "any region"
            return failure(kind=kind, obj=obj, rule=STORAGE_CLASS_OUTSIDE_REGIONS, scope=scope,
                            detail=f"StorageClass {name} allows volumes in {where} (allowedTopologies)")
        return Decision(True, IN_REGIONS, f"StorageClass {name} provisions only in "
                                          f"{_regions_text(sorted(place.regions))}")
    mode = storage_class.get("volumeBindingMode") or "Immediate"
    if mode != WAIT_FOR_FIRST_CONSUMER:
        return failure(kind=kind, obj=obj, rule=STORAGE_CLASS_NOT_PINNED, scope=scope,
                        detail=f"StorageClass {name} provisions volumes at once ({mode}) in any zone: give it "
                               f"allowedTopologies in the allowed regions or volumeBindingMode {WAIT_FOR_FIRST_CONSUMER}")
    return Decision(True, IN_REGIONS, f"StorageClass {name} provisions where the first pod runs "
                                      f"({WAIT_FOR_FIRST_CONSUMER}), and pods are pinned")


def check_volume(*, volume: Manifest, scope: Scope, topology: Topology, subject: tuple[str, Manifest]) -> Decision:
    """A PersistentVolume's node affinity (and topology labels) keep its data in the regions."""
    kind, obj = subject
    if (conflict := _no_common_region(kind, obj, scope)) is not None:
        return conflict
    name = volume["metadata"]["name"]
    regions = volume_regions(volume=volume, topology=topology, allowed=scope.regions)
    if regions is None:
        return failure(kind=kind, obj=obj, rule=VOLUME_TOPOLOGY_UNKNOWN, scope=scope,
                        detail=f"PersistentVolume {name} has no node affinity or topology labels, so where its "
                               "data lives cannot be verified: provision it through a topology-aware StorageClass")
    outside = sorted(regions - set(scope.regions))
    if outside:
        return failure(kind=kind, obj=obj, rule=VOLUME_OUTSIDE_REGIONS, scope=scope,
                        detail=f"PersistentVolume {name} is in {_regions_text(outside)}")
    return Decision(True, IN_REGIONS, f"PersistentVolume {name} is in {_regions_text(sorted(regions))}")


def volume_regions(*, volume: Manifest, topology: Topology, allowed: Sequence[str]) -> frozenset[str] | None:
    """The regions a PersistentVolume's data may be in, by its node affinity and topology labels
    (None: nothing says). Used by ``check_volume`` and by the evidence report."""
    required = ((volume.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}
    place = _terms_place(required.get("nodeSelectorTerms") or [], topology, allowed, "node affinity")
    labels = {k: v for k, v in ((volume.get("metadata") or {}).get("labels") or {}).items() if _topology_kind(k)}
    return _intersect(place.regions, _labels_place(labels, topology, allowed, "label").regions)


def check_claim(*, claim: Manifest, scope: Scope, topology: Topology, volume: Manifest | None,
                storage_class: Manifest | None) -> Decision:
    """A PersistentVolumeClaim keeps its data in the regions: judged by its volume once it has
    one, else by the StorageClass that will provision it. A class that does not exist yet
    provisions nothing; the audit judges the claim again when it does."""
    subject = ("PersistentVolumeClaim", claim)
    if volume is not None:
        return check_volume(volume=volume, scope=scope, topology=topology, subject=subject)
    if storage_class is not None:
        return check_storage_class(storage_class=storage_class, scope=scope, topology=topology, subject=subject)
    wanted = (claim.get("spec") or {}).get("storageClassName")
    return Decision(True, IN_REGIONS, f"no volume yet, and StorageClass {wanted or '(default)'} does not exist "
                                      "to provision one")


# --- Services ----------------------------------------------------------------------------------


def check_service(*, service: Manifest, scope: Scope) -> Decision:
    """A Service opens the namespace only through routes the stack declares.

    LoadBalancer and NodePort need ``spec.residency.exposure``; externalIPs and ExternalName
    have no declaration in the API, so they are always outside the declared routes.
    """
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    failures: list[tuple[str, str]] = []
    if kind == "LoadBalancer" and not scope.allow_load_balancer:
        failures.append((LOAD_BALANCER_NOT_ALLOWED, ("type LoadBalancer may publish it beyond the jurisdiction; "
                                                    "set spec.residency.exposure.allowLoadBalancer to allow it")))
    if kind == "NodePort" and not scope.allow_node_port:
        failures.append((NODE_PORT_NOT_ALLOWED, ("type NodePort opens a port on every node; "
                                                "set spec.residency.exposure.allowNodePort to allow it")))
    if spec.get("externalIPs"):
        failures.append((EXTERNAL_IPS_NOT_ALLOWED, (f"externalIPs {', '.join(spec['externalIPs'])} route outside "
                                                   "traffic into the namespace, which no residency field declares")))
    if kind == "ExternalName":
        failures.append((EXTERNAL_NAME_NOT_ALLOWED, (f"type ExternalName sends traffic to {spec.get('externalName')}, "
                                                    "outside the declared egress: reach it through "
                                                    "spec.residency.egress.allowCIDRs instead")))
    if not failures:
        return Decision(True, IN_REGIONS, f"Service of type {kind} stays inside the cluster's declared routes")
    return failure(kind="Service", obj=service, rule=failures[0][0], scope=scope,
                    detail="; ".join(f"{detail} ({rule})" if index else detail
                                     for index, (rule, detail) in enumerate(failures)))


# --- the stack itself --------------------------------------------------------------------------


def check_stack(*, stack: SovereignStack, body: Manifest, storage_classes: Mapping[str, Manifest],
                topology: Topology) -> Decision:
    """A stack's own node pools and volumes point only into its regions.

    Pools of existing nodes must not select nodes by a topology label outside; the StorageClass
    of each volume store and model cache must provision only inside (``check_storage_class``).
    S3 stores' regions are a CRD rule already; where their buckets really are is the store check.
    """
    scope = stack_scope(stack)
    subject = ("SovereignStack", body)
    problems: list[Decision] = []
    regions = scope.regions
    for pool in stack.spec.node_pools:
        selector = pool.existing.node_selector if pool.existing else {}
        place = _labels_place(selector, topology, regions, f"nodePools {pool.name} existing.nodeSelector")
        outside = [(what, region) for what, region in place.named if region not in regions]
        if outside:
            problems.append(failure(kind="SovereignStack", obj=body, rule=NODE_POOL_OUTSIDE_REGIONS, scope=scope,
                                     detail="; ".join(f"{what} selects nodes in {region}" for what, region in outside)))
    classes = [(f"dataStores {s.name}", s.volume.storage_class_name) for s in stack.spec.data_stores if s.volume]
    classes += [(f"models {m.name}: cache", m.cache.storage_class_name) for m in stack.spec.models]
    for what, name in classes:
        if name is None or name not in storage_classes:
            continue
        decision = check_storage_class(storage_class=storage_classes[name], scope=scope, topology=topology,
                                       subject=subject)
        if not decision.ok:
            problems.append(decision._replace(message=f"{decision.message} (used by {what})"))
    if not problems:
        return Decision(True, IN_REGIONS, f"node pools and volumes of the stack stay in {scope.allowed}")
    return Decision(False, problems[0].reason, "; ".join(p.message for p in problems))


# --- data stores and the workloads that use them ----------------------------------------------


def blocked_workloads(*, stack: SovereignStack, failed_stores: Mapping[str, Decision],
                      failed_sources: Mapping[str, Decision] | None = None) -> dict[str, Decision]:
    """Models and applications that must not start because a store they use failed its checks,
    or (``failed_sources``, by model name) the store holds no model where the model's
    ``source.path`` points.

    ``failed_stores`` maps a data store's name to its failing decision; the result maps each
    workload's name (models and applications share the namespace's Deployment names) to a
    ``DataStoreFailed`` decision naming the store and its failed check, or to the model
    source's own decision (its reason, such as ``ModelFileMissing``, and its message).
    """
    uses = [(model.name, "model", [model.source.data_store]) for model in stack.spec.models]
    uses += [(app.name, "application", list(app.data_stores)) for app in stack.spec.applications]
    blocked: dict[str, Decision] = {}
    for name, kind, stores in uses:
        failing = [store for store in stores if store in failed_stores]
        if failing:
            said = "; ".join(f"data store {store} failed {failed_stores[store].reason}: {failed_stores[store].message}"
                             for store in failing)
            blocked[name] = Decision(False, STORE_FAILED, f"{kind} {name} is not started: {said}")
    for name, decision in (failed_sources or {}).items():
        if name not in blocked:
            blocked[name] = Decision(False, decision.reason, f"model {name} is not started: {decision.message}")
    return blocked
