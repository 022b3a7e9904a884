"""The residency evidence of one stack, gathered from the live cluster for an auditor.

``gather_evidence`` reads the stack, its namespace and everything in it that the stack governs,
and judges each object with the same rules the webhooks and the audit apply
(``policy.residency``): every pod with the node and region it runs in, every volume claim with
its class and volume, every Service with its exposure, every data store with each check of its
bucket (``services.residency_stores``, read only), the violations the audit recorded with their
timestamps, the conditions, the admission configuration in force (the residency admission
policies whose bindings select the namespace, what each judges and whether it denies or only
warns and audits; the namespace's residency parameters, its annotations; the operator's lookup
webhooks; whether the namespace is governed), and the lineage of each model with evaluation
(which model served it, when, admitted by which evaluation of which dataset version). The result is
an ``Evidence`` model: ``report`` renders it as HTML or JSON. Called by ``cli.report``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from sovereign import __version__
from sovereign.api import (
    Condition,
    ModelStatus,
    Residency,
    ResidencyViolation,
    ServingRecord,
    SovereignStack,
    parse_stack,
)
from sovereign.kube.admission import (
    CONFIGURATION_NAME,
    NAMESPACE,
    PERSISTENT_VOLUME,
    STORAGE_CLASS,
    read_admission_policies,
    read_webhook_configurations,
)
from sovereign.kube.client import Kube
from sovereign.kube.resources import NODE, STACK
from sovereign.policy import residency as policy
from sovereign.policy.residency_admission import PARAMETERS
from sovereign.render.names import ENFORCEMENT_LABEL, GOVERNED_LABEL
from sovereign.policy.residency_store import Decision
from sovereign.services.residency_audit import judge_namespace, stored_residency
from sovereign.services.residency_stores import verify_data_stores


class StackNotFound(LookupError):
    """The stack named on the command line does not exist."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, serialize_by_alias=True, validate_by_name=True, frozen=True)


class Check(_Model):
    """One rule applied to one object: passed or not, the rule's reason and what it found."""

    ok: bool
    reason: str
    message: str

    @classmethod
    def of(cls, decision: Decision) -> Check:
        return cls(ok=decision.ok, reason=decision.reason, message=decision.message)


class StackFacts(_Model):
    name: str
    namespace: str
    uid: str
    generation: int | None
    jurisdiction: str
    regions: list[str]
    enforcement: str
    allow_load_balancer: bool
    allow_node_port: bool
    egress_cidrs: list[str] = Field(serialization_alias="egressCIDRs")


class PodEvidence(_Model):
    name: str
    stack: str
    phase: str
    node: str
    region: str
    zone: str
    check: Check


class VolumeEvidence(_Model):
    claim: str
    storage_class: str
    volume: str
    phase: str
    region: str  # where the bound volume's data is, by its topology; empty while unbound
    check: Check


class ServiceEvidence(_Model):
    name: str
    type: str
    check: Check


class StoreEvidence(_Model):
    name: str
    bucket: str
    endpoint: str
    declared_region: str
    observed_region: str
    summary: Check
    checks: dict[str, Check]


class WebhookEvidence(_Model):
    configuration: str
    name: str
    resources: list[str]
    operations: list[str]
    namespace_selector: str
    failure_policy: str
    endpoint: str


class PolicyEvidence(_Model):
    """A residency admission policy, by one of its bindings that selects the namespace."""

    kind: str
    name: str
    binding: str
    resources: list[str]
    operations: list[str]
    #: What a failed rule does: Deny; Warn, Audit; or Mutate.
    actions: list[str]
    failure_policy: str


class AdmissionEvidence(_Model):
    namespace_governed: bool
    enforcement: str
    parameters: dict[str, str]
    policies: list[PolicyEvidence]
    configurations_present: list[str]
    webhooks: list[WebhookEvidence]


class ModelLineage(_Model):
    """Which model served one logical name, from when to when, admitted by which evaluation
    (``status.models[].history``, kept by the blue/green rollouts of models with evaluation)."""

    name: str
    history: list[ServingRecord]


class Evidence(_Model):
    """Everything the report shows, as of ``generated_at``."""

    generated_at: datetime
    operator_version: str
    stack: StackFacts
    compliant: bool
    stack_check: Check
    conditions: list[Condition]
    violations: list[ResidencyViolation]
    pods: list[PodEvidence]
    volumes: list[VolumeEvidence]
    services: list[ServiceEvidence]
    stores: list[StoreEvidence]
    admission: AdmissionEvidence
    lineage: list[ModelLineage] = []


def gather_evidence(*, kube: Kube, namespace: str, name: str, check_stores: bool = True,
                    now: datetime | None = None) -> Evidence:
    """The evidence of stack ``namespace/name``; ``check_stores`` False skips reaching the buckets."""
    body = kube.get(STACK, name=name, namespace=namespace)
    if body is None:
        raise StackNotFound(f"SovereignStack {namespace}/{name} does not exist")
    stack = parse_stack({key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body})
    nodes = kube.list(NODE)
    governance = policy.Governance(
        stacks={namespace: _residencies(kube.list(STACK, namespace=namespace))},
        topology=policy.Topology.from_nodes(nodes),
        storage_classes={sc["metadata"]["name"]: sc for sc in kube.list(STORAGE_CLASS)},
    )
    zones = {node["metadata"]["name"]: (node["metadata"].get("labels") or {}).get(policy.ZONE_LABEL, "")
             for node in nodes}
    violations, _ = stored_residency(body)
    pods, volumes, services = _objects(kube, stack, governance, zones)
    residency = stack.spec.residency
    namespace_object = kube.get(NAMESPACE, name=namespace) or {"metadata": {}}
    return Evidence(
        generated_at=(now or datetime.now(UTC)).replace(microsecond=0),
        operator_version=__version__,
        stack=StackFacts(
            name=name, namespace=namespace, uid=body["metadata"].get("uid", ""),
            generation=body["metadata"].get("generation"), jurisdiction=residency.jurisdiction,
            regions=list(residency.regions), enforcement=residency.enforcement.value,
            allow_load_balancer=residency.exposure.allow_load_balancer,
            allow_node_port=residency.exposure.allow_node_port, egress_cidrs=list(residency.egress.allow_cidrs),
        ),
        compliant=not violations,
        stack_check=Check.of(policy.check_stack(stack=stack, body=body, storage_classes=governance.storage_classes,
                                                topology=governance.topology)),
        conditions=[Condition.model_validate(c) for c in (body.get("status") or {}).get("conditions") or []],
        violations=violations,
        pods=pods,
        volumes=volumes,
        services=services,
        stores=_stores(kube, stack) if check_stores else [],
        admission=_admission(kube, namespace_object),
        lineage=[ModelLineage(name=m.name, history=m.history) for m in _stored_models(body) if m.history],
    )


def _stored_models(body: dict[str, Any]) -> list[ModelStatus]:
    """The models' status as the operator stored it (entries it cannot read are left out)."""
    models = []
    for entry in (body.get("status") or {}).get("models") or []:
        try:
            models.append(ModelStatus.model_validate(entry))
        except ValidationError:
            continue
    return models


def _residencies(stacks: list[dict[str, Any]]) -> dict[str, Residency]:
    found = {}
    for item in stacks:
        try:
            found[item["metadata"]["name"]] = Residency.model_validate((item.get("spec") or {}).get("residency"))
        except ValidationError:
            continue
    return found


def _objects(kube: Kube, stack: SovereignStack, governance: policy.Governance,
             zones: dict[str, str]) -> tuple[list[PodEvidence], list[VolumeEvidence], list[ServiceEvidence]]:
    """The governed pods, claims and Services with their checks (``residency_audit.judge_namespace``)."""
    pods, volumes, services = [], [], []
    for judged in judge_namespace(kube=kube, stack=stack, governance=governance):
        meta, spec, status = judged.obj["metadata"], judged.obj.get("spec") or {}, judged.obj.get("status") or {}
        check = Check.of(judged.decision)
        if judged.kind == "Pod":
            node = spec.get("nodeName") or ""
            pods.append(PodEvidence(name=meta["name"], stack=(meta.get("labels") or {}).get(policy.STACK_LABEL, ""),
                                    phase=status.get("phase", ""), node=node,
                                    region=governance.topology.node_regions.get(node, ""), zone=zones.get(node, ""),
                                    check=check))
        elif judged.kind == "PersistentVolumeClaim":
            bound = kube.get(PERSISTENT_VOLUME, name=spec["volumeName"]) if spec.get("volumeName") else None
            regions = policy.volume_regions(volume=bound, topology=governance.topology,
                                            allowed=stack.spec.residency.regions) if bound else None
            volumes.append(VolumeEvidence(claim=meta["name"], storage_class=spec.get("storageClassName") or "",
                                          volume=spec.get("volumeName", ""), phase=status.get("phase", ""),
                                          region=", ".join(sorted(regions or ())), check=check))
        else:
            services.append(ServiceEvidence(name=meta["name"], type=spec.get("type", "ClusterIP"), check=check))
    return pods, volumes, services


def _stores(kube: Kube, stack: SovereignStack) -> list[StoreEvidence]:
    declared = {entry.name: entry.s3 for entry in stack.spec.data_stores if entry.s3 is not None}
    return [
        StoreEvidence(name=verdict.name, bucket=verdict.bucket, endpoint=declared[verdict.name].endpoint or "AWS S3",
                      declared_region=declared[verdict.name].region, observed_region=verdict.region,
                      summary=Check.of(verdict.decision),
                      checks={name: Check.of(decision) for name, decision in verdict.checks.items()})
        for verdict in verify_data_stores(kube=kube, stack=stack, create=False)
    ]


def _admission(kube: Kube, namespace: dict[str, Any]) -> AdmissionEvidence:
    configurations = read_webhook_configurations(kube)
    webhooks = []
    for configuration in configurations:
        for hook in configuration.get("webhooks") or []:
            client_config = hook.get("clientConfig") or {}
            service = client_config.get("service")
            endpoint = (client_config.get("url") or
                        (f"service {service['namespace']}/{service['name']}:{service.get('port', 443)}"
                         f"{service.get('path', '')}" if service else ""))
            selector = (hook.get("namespaceSelector") or {}).get("matchLabels") or {}
            webhooks.append(WebhookEvidence(
                configuration=configuration["kind"], name=hook["name"],
                resources=sorted({r for rule in hook.get("rules") or [] for r in rule.get("resources") or []}),
                operations=sorted({o for rule in hook.get("rules") or [] for o in rule.get("operations") or []}),
                namespace_selector=", ".join(f"{k}={v}" for k, v in sorted(selector.items())) or "every namespace",
                failure_policy=hook.get("failurePolicy", "Fail"), endpoint=endpoint,
            ))
    labels = namespace["metadata"].get("labels") or {}
    annotations = namespace["metadata"].get("annotations") or {}
    return AdmissionEvidence(
        namespace_governed=labels.get(GOVERNED_LABEL) == "true",
        enforcement=labels.get(ENFORCEMENT_LABEL, ""),
        parameters={key: annotations[key] for key in PARAMETERS if key in annotations},
        policies=_policies(kube, labels),
        configurations_present=[f"{c['kind']} {CONFIGURATION_NAME}" for c in configurations],
        webhooks=webhooks,
    )


def _policies(kube: Kube, labels: dict[str, str]) -> list[PolicyEvidence]:
    """The residency policies whose bindings select a namespace with ``labels``."""
    found = read_admission_policies(kube, selector="app.kubernetes.io/part-of=sovereign-stack")
    policies = {(obj["kind"], obj["metadata"]["name"]): obj for obj in found if not obj["kind"].endswith("Binding")}
    guarding = []
    for binding in (obj for obj in found if obj["kind"].endswith("Binding")):
        spec = binding.get("spec") or {}
        selector = ((spec.get("matchResources") or {}).get("namespaceSelector") or {}).get("matchLabels") or {}
        kind = binding["kind"].removesuffix("Binding")
        target = policies.get((kind, spec.get("policyName", "")))
        if target is None or any(labels.get(key) != value for key, value in selector.items()):
            continue
        rules = ((target.get("spec") or {}).get("matchConstraints") or {}).get("resourceRules") or []
        guarding.append(PolicyEvidence(
            kind=kind, name=target["metadata"]["name"], binding=binding["metadata"]["name"],
            resources=sorted({r for rule in rules for r in rule.get("resources") or []}),
            operations=sorted({o for rule in rules for o in rule.get("operations") or []}),
            actions=list(spec.get("validationActions") or ["Mutate"]),
            failure_policy=(target.get("spec") or {}).get("failurePolicy", "Fail")))
    return guarding
