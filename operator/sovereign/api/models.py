"""The SovereignStack resource (``sovereign.ai/v1alpha1``) as pydantic models: spec and status.

One set of models drives three things: the CRD schema (``api.crd``), offline validation
(``api.validation``, behind ``sovereign validate``) and the operator's typed view of a stack
(handlers parse bodies with ``api.parse_stack``; services write ``SovereignStackStatus``).
Field names are the wire names in snake_case; the alias generator makes them camelCase, and the
few acronyms Kubernetes spells in capitals (``allowCIDRs``) carry an explicit alias.

Compatibility: this is v1alpha1, but fields are only ever added, optional, with defaults that
keep today's behaviour; each list entry and settings block is an object so it can grow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from sovereign.api import vllm
from sovereign.api.types import (
    LABEL_KEY_PATTERN,
    VALIDATIONS,
    Check,
    Cidr,
    Image,
    Jurisdiction,
    MISSING,
    LabelValue,
    Name,
    Quantity,
    Rule,
    RuleFailure,
    cel_format,
    matches,
    parse_quantity,
)

GROUP = "sovereign.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SovereignStack"
PLURAL = "sovereignstacks"
SINGULAR = "sovereignstack"
SHORT_NAME = "sstack"
CATEGORY = "sovereign"
CRD_NAME = f"{PLURAL}.{GROUP}"

#: Bounds on list sizes. They keep CEL cost estimates within the apiserver's limits; raising one
#: later is a compatible change.
MAX_NODE_POOLS = 16
MAX_DATA_STORES = 16
MAX_MODELS = 32
MAX_APPLICATIONS = 32
MAX_REFERENCES = 16
MAX_REPLICAS = 128

#: vLLM flags ``extraArgs`` may not set, long forms and aliases (``api.vllm`` says why, and which
#: spellings vLLM's parser accepts for each).
OPERATOR_OWNED_VLLM_FLAGS = tuple(
    spelling for flag, aliases in vllm.OWNED_FLAGS.items() for spelling in (flag, *aliases))
#: llama-server flags the operator derives from the model's fields, and the ones that would fetch
#: weights from outside the model's source (a hub, a URL, a registry): ``extraArgs`` may set
#: neither. llama-server reads ``--a_b`` as ``--a-b``, so both spellings are listed.
_LLAMA_CPP_DERIVED_FLAGS = ("-m", "--model", "-a", "--alias", "--host", "--port")
_LLAMA_CPP_DOWNLOAD_FLAGS = (
    "-mu", "--model-url", "-dr", "--docker-repo", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file",
    "-hft", "--hf-token", "-mmu", "--mmproj-url", "-hfd", "-hfrd", "--hf-repo-draft", "--spec-draft-hf",
    "--models-dir", "--models-preset",
)  # fmt: skip
OPERATOR_OWNED_LLAMA_CPP_FLAGS = tuple(dict.fromkeys(
    spelling
    for flag in (*_LLAMA_CPP_DERIVED_FLAGS, *_LLAMA_CPP_DOWNLOAD_FLAGS)
    for spelling in (flag, "--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag)
))
#: GPUs a replica may have: 0 only for CPU engines, otherwise a tensor-parallel size within one node.
GPU_COUNTS_PER_REPLICA = (0, 1, 2, 4, 8)
DEFAULT_CACHE_SIZE = "200Gi"
#: The slowest rate a replica is assumed to copy and then load its weights at, unless
#: ``weightsThroughput`` says otherwise: the windows the operator renders grow with the size.
DEFAULT_WEIGHTS_THROUGHPUT = "50Mi"
#: Fixed time allowed around the copy (pod start, listing, HEADs) and the load (the engine's own
#: start: CUDA graphs, compilation), on top of size / throughput.
COPY_BASE_SECONDS = 120
LOAD_BASE_SECONDS = 600
_MIN_THROUGHPUT = "1Mi"
_THROUGHPUT_RULE = f"must be a Kubernetes quantity of bytes per second of at least {_MIN_THROUGHPUT}, such as 50Mi or 1Gi"
#: What a vLLM replica requests besides its GPUs, per GPU, when the model sets no resources: vLLM
#: runs one worker process per GPU beside its API server and engine core, each with CPU threads
#: and pinned host memory. Small enough for the smallest one-GPU cloud nodes (4 vCPU, 32 GiB:
#: AWS g6e.xlarge), a fraction of an 8-GPU node (192 vCPU, 2 TiB: p5.48xlarge).
VLLM_CPU_PER_GPU = 2
VLLM_MEMORY_PER_GPU_GIB = 16
S3_ACCESS_KEY_ID_KEY = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY_KEY = "AWS_SECRET_ACCESS_KEY"


def _add_object_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "object_rules", ())
    if rules:
        schema.setdefault(VALIDATIONS, []).extend(rule.to_crd() for rule in rules)


class ApiObject(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        json_schema_extra=_add_object_rules,
    )
    #: Rules over several fields of this object; CEL in the CRD, run in Python by api.validation.
    object_rules: ClassVar[tuple[Rule, ...]] = ()


class StatusObject(ApiObject):
    """Base of the status models: written by the operator, read leniently (a newer operator
    may have written fields this one does not know)."""

    model_config = ConfigDict(extra="ignore")


def map_list(*, description: str, max_items: int, key: str = "name") -> Any:
    """A list of entries identified by ``key``: keys unique (the apiserver merges and rejects
    duplicates by key, and server-side apply merges entry by entry)."""
    return Field(
        default_factory=list,
        max_length=max_items,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]},
    )


_UNSET: Any = object()


def set_list(
    *, description: str, max_items: int, min_items: int = 0, default: Any = _UNSET, alias: str | None = None
) -> Any:
    """A list of distinct scalar values; optional (empty) unless ``min_items`` or a ``default`` says otherwise."""
    if default is not _UNSET:
        presence: dict[str, Any] = {"default": default}
    elif min_items:
        presence = {}
    else:
        presence = {"default_factory": list}
    return Field(
        **presence,
        alias=alias,
        min_length=min_items or None,
        max_length=max_items,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


def list_type(field: FieldInfo) -> str | None:
    """The ``x-kubernetes-list-type`` of a list field ("map", "set"), or None (atomic)."""
    extra = field.json_schema_extra
    return extra.get("x-kubernetes-list-type") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _object_default(description: str) -> Any:
    """A settings block that is always present, so its own defaults show in the stored object."""
    return {"description": description, "json_schema_extra": {"default": {}}}


# === spec: residency ===========================================================================


class Enforcement(StrEnum):
    """How residency rules are applied."""

    ENFORCE = "Enforce"
    AUDIT = "Audit"


class Egress(ApiObject):
    """Network egress allowed to the stack's pods. Everything else is denied by a NetworkPolicy,
    except DNS and traffic inside the stack's namespace."""

    allow_cidrs: list[Cidr] = set_list(
        alias="allowCIDRs",
        max_items=64,
        description=(
            "Destinations, as CIDRs, the stack's pods may reach besides DNS and their own namespace: "
            "in-country object store endpoints, registries, identity providers. Empty (the default) "
            "allows nothing else."
        ),
    )
    allow_host_namespaces: bool = Field(
        default=False,
        description=(
            "Allow pods in the stack's namespace to use the node's network, PID or IPC namespace (hostNetwork, "
            "hostPID, hostIPC). Default false: such a pod is outside the egress NetworkPolicy and the pod boundary."
        ),
    )


class Exposure(ApiObject):
    """Ways the stack's namespace may be reached from outside the cluster."""

    allow_load_balancer: bool = Field(
        default=False,
        description=(
            "Allow Services of type LoadBalancer in the stack's namespace. Default false: a load "
            "balancer may publish the service beyond the jurisdiction."
        ),
    )
    allow_node_port: bool = Field(
        default=False, description="Allow Services of type NodePort in the stack's namespace. Default false."
    )


class Residency(ApiObject):
    """Where the stack's workloads and data may live, and what happens when something does not."""

    jurisdiction: Jurisdiction = Field(
        description="The country whose law governs the stack, as an ISO 3166-1 alpha-2 code in upper case (QA, DE)."
    )
    regions: list[LabelValue] = set_list(
        min_items=1,
        max_items=16,
        description=(
            "Allowed values of the node label topology.kubernetes.io/region. Every pod of the stack "
            "is pinned to nodes in these regions, and every S3 store's region must be one of them. "
            "At least one."
        ),
    )
    enforcement: Enforcement = Field(
        default=Enforcement.ENFORCE,
        description=(
            "Enforce (default): admission denies pods, volumes and Services that break the rules. "
            "Audit: nothing is denied; breaches are recorded in status.violations, Events and metrics."
        ),
    )
    egress: Egress = Field(default_factory=Egress, **_object_default("Network egress allowed to the stack's pods."))
    exposure: Exposure = Field(
        default_factory=Exposure,
        **_object_default("Ways the stack's namespace may be reached from outside the cluster."),
    )


# === spec: node pools ==========================================================================


class Provisioner(StrEnum):
    """Where a node pool's nodes come from."""

    KARPENTER = "Karpenter"
    EXISTING = "Existing"


class GpuSpec(ApiObject):
    """The GPUs of each node in a pool."""

    product: LabelValue = Field(
        description=(
            "GPU product, as the value of the node label nvidia.com/gpu.product set by GPU feature "
            "discovery, such as NVIDIA-H100-80GB-HBM3."
        )
    )
    per_node: int = Field(ge=1, le=16, description="Number of GPUs (nvidia.com/gpu) on each node, 1 to 16.")


class NodePoolLimits(ApiObject):
    """Caps on the size of a pool (Karpenter stops provisioning at the first one reached)."""

    gpus: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=(
            "Most GPUs the pool may have in total. At least gpu.perNode; only for pools with gpu."
        ),
    )
    cpu: Quantity | None = Field(
        default=None, description="Most CPU the pool's nodes may have in total, such as 64 or 128000m."
    )
    memory: Quantity | None = Field(
        default=None, description="Most memory the pool's nodes may have in total, such as 512Gi."
    )

    object_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.gpus) || has(self.cpu) || has(self.memory)",
            message="set at least one of gpus, cpu or memory (or leave limits out: no cap)",
            field_path=None,
            failures=lambda limits: (
                [RuleFailure((), MISSING, "set at least one of gpus, cpu or memory (or leave limits out: no cap)")]
                if limits.gpus is None and limits.cpu is None and limits.memory is None
                else []
            ),
        ),
    )


class NodeClassRef(ApiObject):
    """The Karpenter node class (cloud-specific node settings) the pool's nodes use."""

    group: str = Field(
        default="karpenter.k8s.aws",
        min_length=1,
        max_length=253,
        description="API group of the node class. Default karpenter.k8s.aws.",
    )
    kind: str = Field(
        default="EC2NodeClass", min_length=1, max_length=63, description="Kind of the node class. Default EC2NodeClass."
    )
    name: str = Field(min_length=1, max_length=253, description="Name of the node class (cluster-scoped).")


class CapacityType(StrEnum):
    """How Karpenter buys capacity."""

    ON_DEMAND = "on-demand"
    SPOT = "spot"
    RESERVED = "reserved"


class ConsolidationPolicy(StrEnum):
    """When Karpenter may remove or replace nodes of the pool."""

    WHEN_EMPTY = "WhenEmpty"
    WHEN_EMPTY_OR_UNDERUTILIZED = "WhenEmptyOrUnderutilized"


#: The label each Karpenter cloud provider's GPU instance types carry naming their GPU, by the API
#: group of the provider's node class (``nodeClassRef.group``), read from the providers' sources
#: (their ``apis/v1*/labels.go``). Karpenter only honours a requirement on a key its instance
#: types define; any other key, such as ``nvidia.com/gpu.product``, it stamps onto whatever
#: instance it launches, which is why ``gpuName`` pins through this label.
GPU_NAME_LABELS = {
    # aws/karpenter-provider-aws (EC2NodeClass): lower case, such as h100, a100, l40s.
    "karpenter.k8s.aws": "karpenter.k8s.aws/instance-gpu-name",
    # Azure/karpenter-provider-azure (AKSNodeClass): such as H100, A100.
    "karpenter.azure.com": "karpenter.azure.com/sku-gpu-name",
    # cloudpilot-ai/karpenter-provider-gcp (GCENodeClass): GCE accelerator types, such as
    # nvidia-h100-80gb, nvidia-tesla-a100 (the same values as cloud.google.com/gke-accelerator).
    "karpenter.k8s.gcp": "karpenter.k8s.gcp/instance-gpu-name",
    # Karpenter's KWOK provider (KWOKNodeClass), as the local cloud's instance types set it.
    "karpenter.kwok.sh": "karpenter.kwok.sh/instance-gpu-name",
}
_GPU_NAME_GROUPS = ", ".join(GPU_NAME_LABELS)


class KarpenterSettings(ApiObject):
    """Settings of the Karpenter NodePool the operator creates for this pool."""

    node_class_ref: NodeClassRef = Field(description="The Karpenter node class of the pool's nodes.")
    instance_types: list[LabelValue] = set_list(
        max_items=32,
        description=(
            "Instance types Karpenter may launch (values of node.kubernetes.io/instance-type). "
            "Empty (the default) lets Karpenter choose. A pool with gpu needs this or gpuName: "
            "Karpenter would otherwise launch any GPU and label it gpu.product."
        ),
    )
    gpu_name: LabelValue | None = Field(
        default=None,
        description=(
            "The GPU Karpenter may launch, as the value of the GPU-name label of the provider's instance "
            "types, chosen by nodeClassRef.group: karpenter.k8s.aws/instance-gpu-name on AWS (h100, "
            "a100, l40s), karpenter.azure.com/sku-gpu-name on Azure (H100, A100), "
            "karpenter.k8s.gcp/instance-gpu-name on GCP (nvidia-h100-80gb), "
            "karpenter.kwok.sh/instance-gpu-name in the local KWOK cloud (h100). Only for pools "
            "with gpu; such a pool needs this or instanceTypes."
        ),
    )
    capacity_types: list[CapacityType] = set_list(
        min_items=1,
        max_items=3,
        default=[CapacityType.ON_DEMAND],
        description="Capacity types Karpenter may buy: on-demand, spot, reserved. Default [on-demand].",
    )
    consolidation_policy: ConsolidationPolicy = Field(
        default=ConsolidationPolicy.WHEN_EMPTY,
        description=(
            "WhenEmpty (default): remove only nodes with no stack pods, so loaded model weights are "
            "not thrown away. WhenEmptyOrUnderutilized: also repack underused nodes."
        ),
    )
    consolidate_after: Annotated[
        str,
        Field(max_length=32),
        matches(
            r"^(([0-9]+(s|m|h))+|Never)$",
            "must be a duration of whole seconds, minutes or hours such as 30s, 10m or 1h30m, or Never",
        ),
    ] = Field(
        default="10m",
        description=(
            "How long a node must be consolidatable before Karpenter acts, such as "
            "10m or 1h, or Never. Default 10m."
        ),
    )


_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def _all_label_keys(selector: dict[str, str]) -> bool:
    return all(_LABEL_KEY.fullmatch(key) for key in selector)


class ExistingSettings(ApiObject):
    """How the nodes of a pool of existing nodes are found."""

    node_selector: Annotated[
        dict[str, LabelValue],
        Field(max_length=16),
        Check(
            message="keys must be Kubernetes label keys such as example.com/pool or pool",
            accepts=_all_label_keys,
            # CEL string literals treat a backslash as an escape, so the regex's backslashes are doubled.
            cel="self.all(k, k.matches('" + LABEL_KEY_PATTERN.replace("\\", "\\\\") + "'))",
        ),
    ] = Field(
        default_factory=dict,
        description=(
            "Labels the pool's nodes carry, in addition to the allowed region and the GPU product "
            "labels the operator always requires."
        ),
    )


def _karpenter_settings_failures(pool: NodePool) -> list[RuleFailure]:
    if pool.provisioner is Provisioner.KARPENTER and pool.karpenter is None:
        return [RuleFailure(("karpenter",), MISSING, "karpenter is required when provisioner is Karpenter")]
    if pool.provisioner is not Provisioner.KARPENTER and pool.karpenter is not None:
        return [RuleFailure(("karpenter",), pool.karpenter, "karpenter is only allowed when provisioner is Karpenter")]
    return []


_GPU_UNPINNED = (
    "a Karpenter pool with gpu must pin its GPU: set karpenter.gpuName (the value of the provider's "
    "GPU-name label, such as h100 for karpenter.k8s.aws/instance-gpu-name) or karpenter.instanceTypes; "
    "Karpenter stamps gpu.product onto whatever instance it launches"
)
_GPU_NAME_WITHOUT_GPU = "karpenter.gpuName is only for a pool with gpu; remove it from a CPU pool"
_GPU_NAME_PROVIDER = (
    f"karpenter.gpuName needs a node class of a provider whose GPU label is known ({_GPU_NAME_GROUPS}); "
    "for another provider, pin the GPU with karpenter.instanceTypes"
)


class NodePool(ApiObject):
    """A pool of nodes that models run on: GPU nodes (gpu set) for engine vllm, CPU nodes (gpu
    unset) for engine llama-cpp."""

    name: Name = Field(description="Name of the pool, referenced by spec.models[].nodePool. A DNS-1035 label.")
    provisioner: Provisioner = Field(
        description=(
            "Karpenter: the operator creates a Karpenter NodePool limited to the allowed regions. "
            "Existing: the pool is the nodes already in the cluster that match the GPU product, the "
            "allowed regions and existing.nodeSelector (a pool without gpu: the nodes without a GPU product label)."
        )
    )
    gpu: GpuSpec | None = Field(
        default=None,
        description=(
            "The GPUs of each node in the pool. Unset: a CPU pool, whose nodes have no GPUs (no GPU "
            "taint, no GPU product label), for models whose engine is llama-cpp."
        ),
    )
    limits: NodePoolLimits | None = Field(default=None, description="Caps on the pool's size. Unset: no cap.")
    karpenter: KarpenterSettings | None = Field(
        default=None, description="Karpenter settings. Required when provisioner is Karpenter, not allowed otherwise."
    )
    existing: ExistingSettings | None = Field(
        default=None, description="How the pool's nodes are found. Only allowed when provisioner is Existing."
    )

    object_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.provisioner == 'Karpenter' ? has(self.karpenter) : !has(self.karpenter)",
            message="karpenter is required when provisioner is Karpenter, and only allowed then",
            message_expression=(
                "self.provisioner == 'Karpenter' ? 'karpenter is required when provisioner is Karpenter'"
                " : 'karpenter is only allowed when provisioner is Karpenter'"
            ),
            field_path=".karpenter",
            failures=_karpenter_settings_failures,
        ),
        Rule(
            cel=("!has(self.karpenter) || !has(self.gpu) || has(self.karpenter.gpuName) || "
                 "(has(self.karpenter.instanceTypes) && size(self.karpenter.instanceTypes) > 0)"),
            message=_GPU_UNPINNED,
            field_path=".karpenter",
            failures=lambda pool: (
                [RuleFailure(("karpenter", "gpuName"), MISSING, _GPU_UNPINNED)]
                if pool.karpenter is not None and pool.gpu is not None and pool.karpenter.gpu_name is None
                and not pool.karpenter.instance_types
                else []
            ),
        ),
        Rule(
            cel="!has(self.karpenter) || !has(self.karpenter.gpuName) || has(self.gpu)",
            message=_GPU_NAME_WITHOUT_GPU,
            field_path=".karpenter.gpuName",
            failures=lambda pool: (
                [RuleFailure(("karpenter", "gpuName"), pool.karpenter.gpu_name, _GPU_NAME_WITHOUT_GPU)]
                if pool.karpenter is not None and pool.karpenter.gpu_name is not None and pool.gpu is None
                else []
            ),
        ),
        Rule(
            cel=("!has(self.karpenter) || !has(self.karpenter.gpuName) || "
                 f"self.karpenter.nodeClassRef.group in {list(GPU_NAME_LABELS)!r}"),
            message=_GPU_NAME_PROVIDER,
            field_path=".karpenter.gpuName",
            failures=lambda pool: (
                [RuleFailure(("karpenter", "gpuName"), pool.karpenter.gpu_name, _GPU_NAME_PROVIDER)]
                if pool.karpenter is not None and pool.karpenter.gpu_name is not None
                and pool.karpenter.node_class_ref.group not in GPU_NAME_LABELS
                else []
            ),
        ),
        Rule(
            cel="!has(self.existing) || self.provisioner == 'Existing'",
            message="existing is only allowed when provisioner is Existing",
            field_path=".existing",
            failures=lambda pool: (
                [RuleFailure(("existing",), pool.existing, "existing is only allowed when provisioner is Existing")]
                if pool.existing is not None and pool.provisioner is not Provisioner.EXISTING
                else []
            ),
        ),
        Rule(
            cel="!has(self.limits) || !has(self.limits.gpus) || has(self.gpu)",
            message="limits.gpus is only allowed for a pool with gpu; cap a CPU pool with limits.cpu or limits.memory",
            field_path=".limits.gpus",
            failures=lambda pool: (
                [RuleFailure(("limits", "gpus"), pool.limits.gpus,
                             "limits.gpus is only allowed for a pool with gpu; cap a CPU pool with "
                             "limits.cpu or limits.memory")]
                if pool.limits is not None and pool.limits.gpus is not None and pool.gpu is None
                else []
            ),
        ),
        Rule(
            cel="!has(self.limits) || !has(self.limits.gpus) || !has(self.gpu) || self.limits.gpus >= self.gpu.perNode",
            message="limits.gpus must be at least gpu.perNode, or not one node fits in the pool",
            message_expression=cel_format(
                "limits.gpus (%d) must be at least gpu.perNode (%d), or not one node fits in the pool",
                "self.limits.gpus",
                "self.gpu.perNode",
            ),
            field_path=".limits.gpus",
            failures=lambda pool: (
                [
                    RuleFailure(
                        ("limits", "gpus"),
                        pool.limits.gpus,
                        f"limits.gpus ({pool.limits.gpus}) must be at least gpu.perNode ({pool.gpu.per_node}), "
                        "or not one node fits in the pool",
                    )
                ]
                if pool.limits is not None and pool.limits.gpus is not None and pool.gpu is not None
                and pool.limits.gpus < pool.gpu.per_node
                else []
            ),
        ),
    )


# === spec: data stores =========================================================================

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DnsSubdomain = Annotated[
    str,
    Field(min_length=1, max_length=253),
    matches(
        DNS_SUBDOMAIN_PATTERN,
        "must be a DNS-1123 subdomain: lower case letters, digits, '-' and '.', such as s3-creds",
    ),
]


class DeletionPolicy(StrEnum):
    """What happens to stored data when its store leaves the stack or the stack is deleted."""

    RETAIN = "Retain"
    DELETE = "Delete"


class SecretRef(ApiObject):
    """A Secret in the stack's namespace."""

    name: DnsSubdomain = Field(description="Name of the Secret, in the stack's namespace.")


class S3Store(ApiObject):
    """An S3-compatible bucket: AWS S3, MinIO, Ceph RGW or any other S3 endpoint."""

    bucket: Annotated[
        str,
        Field(min_length=3, max_length=63),
        matches(
            r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            "must be an S3 bucket name: 3 to 63 lower case letters, digits, '.' or '-', "
            "starting and ending with a letter or digit",
        ),
    ] = Field(description="Name of the bucket.")
    region: LabelValue = Field(
        description=(
            "Region the bucket lives in, as the store reports it (its LocationConstraint). Must be one of "
            "spec.residency.regions; the operator checks the bucket's actual location against it."
        )
    )
    endpoint: Annotated[
        str,
        Field(max_length=2048),
        matches(r"^https?://[^\s/?#]+(/[^\s]*)?$", "must be an http:// or https:// URL such as https://s3.gov.qa"),
    ] | None = Field(default=None, description="URL of the S3 endpoint. Unset: the AWS S3 endpoint of the region.")
    force_path_style: bool = Field(
        default=False,
        description=(
            "Address the bucket as <endpoint>/<bucket> instead of <bucket>.<endpoint> "
            "(MinIO usually needs this). Default false."
        ),
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            f"Secret with the keys {S3_ACCESS_KEY_ID_KEY} and {S3_SECRET_ACCESS_KEY_KEY}, used by the operator "
            "and mounted into the pods that use the store. Unset: ambient credentials (for example IRSA)."
        ),
    )
    create: bool = Field(
        default=False,
        description="Create the bucket in region when it does not exist. Default false: a missing bucket is an error.",
    )


class AccessMode(StrEnum):
    """PersistentVolumeClaim access modes."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_ONLY_MANY = "ReadOnlyMany"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


class VolumeStore(ApiObject):
    """A PersistentVolumeClaim the operator creates in the stack's namespace."""

    size: Quantity = Field(description="Requested capacity, as a Kubernetes quantity such as 200Gi or 2Ti.")
    storage_class_name: DnsSubdomain | None = Field(
        default=None,
        description=(
            "StorageClass of the claim. Unset: the cluster's default class. The class must bind volumes "
            "to the allowed regions (topology-aware provisioning) or residency checks report the volume."
        ),
    )
    access_modes: list[AccessMode] = set_list(
        min_items=1,
        max_items=4,
        default=[AccessMode.READ_WRITE_ONCE],
        description=(
            "Access modes of the claim. Default [ReadWriteOnce]; use ReadWriteMany to "
            "share it between pods on several nodes."
        ),
    )


class DataStore(ApiObject):
    """A place data and model weights live, inside the jurisdiction. Exactly one of s3 or volume."""

    name: Name = Field(
        description=(
            "Name of the store, referenced by spec.models[].source.dataStore and "
            "spec.applications[].dataStores."
        )
    )
    s3: S3Store | None = Field(default=None, description="An S3-compatible bucket.")
    volume: VolumeStore | None = Field(default=None, description="A PersistentVolumeClaim.")
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description=(
            "Retain (default): the bucket or volume and its data outlive the stack. Delete: they are "
            "deleted with the stack or when the store is removed from it."
        ),
    )

    object_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.s3) != has(self.volume)",
            message="exactly one of s3 or volume must be set",
            field_path=None,
            failures=lambda store: (
                [RuleFailure((), MISSING, "exactly one of s3 or volume must be set")]
                if (store.s3 is None) == (store.volume is None)
                else []
            ),
        ),
    )


# === spec: models ==============================================================================


class ModelSource(ApiObject):
    """Where a model's weights are copied from: always a declared in-country store."""

    data_store: Name = Field(description="Name of the store holding the weights; must be declared in spec.dataStores.")
    path: Annotated[
        str,
        Field(max_length=1024),
        matches(
            r"^([A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*/?)?$",
            "must be a relative path of letters, digits, '_', '.' and '-' separated by '/', "
            "such as models/qwen2.5-72b/ (no leading '/', no '..', no empty segments)",
        ),
    ] = Field(
        default="",
        description="Key prefix (S3) or directory (volume) of the weights inside the store. Default: the store's root.",
    )


def _quantity_at_least(text: str, least: str) -> bool:
    try:
        return parse_quantity(text) >= parse_quantity(least)
    except ValueError:
        return False


class CacheLayout(StrEnum):
    """Where a model's weights are kept once copied from its store, and so how often they are copied."""

    PER_REPLICA = "PerReplica"
    PER_NODE = "PerNode"
    SHARED_VOLUME = "SharedVolume"


class LoadFormat(StrEnum):
    """How the engine gets the weights from an S3 store."""

    COPY = "Copy"
    RUNAI_STREAMER = "RunaiStreamer"


#: Key extensions of weight files the Run:ai streamer cannot read (it reads safetensors only).
NOT_SAFETENSORS_SUFFIXES = (".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".tar", ".zip")
#: A StorageClass annotation by which a cluster admin vouches that the class provisions
#: ReadWriteMany volumes (a StorageClass does not say which access modes its provisioner serves).
RWX_ANNOTATION = "sovereign.ai/access-modes"


class ModelCache(ApiObject):
    """Where the model's weights are kept after they are copied from an S3 store, and how many
    copies there are."""

    layout: CacheLayout = Field(
        default=CacheLayout.PER_REPLICA,
        description=(
            "PerReplica (default): each replica copies the weights into a volume of its own (engine vllm: "
            "a generic ephemeral volume of storageClassName; llama-cpp: an emptyDir); a new replica or a "
            "rollout copies again. It needs nothing from the cluster, and is what stacks had before this "
            "field existed. SharedVolume: one ReadWriteMany claim per model and source, filled once by a "
            "loader Job and mounted read-only by every replica; no replica starts before the Job "
            "succeeded, and a changed source fills a new claim while the running replicas keep the old "
            "one. Needs a StorageClass that provisions ReadWriteMany volumes (storageClassName, or the "
            f"default class; a class the operator does not know as such may be annotated {RWX_ANNOTATION}: "
            "ReadWriteMany). PerNode: a directory on each node (hostPath under "
            "/var/lib/sovereign-stack/models), filled by the first replica on that node; further "
            "replicas on the node find it verified and copy nothing. For clusters without a "
            "ReadWriteMany class. Only for S3 sources (a volume store is mounted as it is)."
        ),
    )
    size: Quantity = Field(
        default=DEFAULT_CACHE_SIZE,
        description=(
            f"Capacity of the weights volume: the shared claim (SharedVolume) or each replica's volume "
            f"(PerReplica). Default {DEFAULT_CACHE_SIZE}; at least the size of the weights. For engine "
            "llama-cpp with PerReplica, the size limit of the emptyDir that holds the GGUF file."
        ),
    )
    storage_class_name: DnsSubdomain | None = Field(
        default=None,
        description=(
            "StorageClass of the weights volume. Unset: the cluster's default class. With SharedVolume the "
            "class must provision ReadWriteMany volumes. Not for PerNode (a node directory), nor for a "
            "llama-cpp model with PerReplica (an emptyDir)."
        ),
    )


#: Why ``autoscaling.minReplicas: 0`` is refused, and what to write instead.
MIN_REPLICAS_ZERO_MESSAGE = (
    "minReplicas 0 cannot wake up: the autoscaler reads the request queue from the model's own "
    "replicas, so at zero replicas no request is ever seen; set autoscaling.minReplicas to 1 or more"
)


class Autoscaling(ApiObject):
    """Replica autoscaling on the depth of vLLM's request queue (a KEDA ScaledObject)."""

    # 0 stays in the schema's range so that the rule below, which says why and what to do,
    # answers it rather than a bare "should be greater than or equal to 1".
    min_replicas: int = Field(
        default=1, ge=0, le=MAX_REPLICAS, description=(
            "Fewest replicas, at least 1. Default 1. Zero is refused: the queue depth that "
            "drives the autoscaler is read from the model's own replicas, so with none running "
            "no request could ever wake the model again. An idle model keeps one replica; to "
            "release its GPUs, remove the model or set its replicas without autoscaling."
        )
    )
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, description="Most replicas; at least minReplicas.")
    target_waiting_requests: int = Field(
        default=5,
        ge=1,
        le=10000,
        description="Requests waiting in vLLM's queue, per replica, above which a replica is added. Default 5.",
    )

    object_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas >= 1",
            message=MIN_REPLICAS_ZERO_MESSAGE,
            field_path=".minReplicas",
            failures=lambda scaling: (
                [RuleFailure(("minReplicas",), scaling.min_replicas, MIN_REPLICAS_ZERO_MESSAGE)]
                if scaling.min_replicas < 1
                else []
            ),
        ),
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            message_expression=cel_format(
                "minReplicas (%d) must not exceed maxReplicas (%d)", "self.minReplicas", "self.maxReplicas"
            ),
            field_path=".minReplicas",
            failures=lambda scaling: (
                [
                    RuleFailure(
                        ("minReplicas",),
                        scaling.min_replicas,
                        f"minReplicas ({scaling.min_replicas}) must not exceed maxReplicas ({scaling.max_replicas})",
                    )
                ]
                if scaling.min_replicas > scaling.max_replicas
                else []
            ),
        ),
    )


class Engine(StrEnum):
    """The inference server that runs a model."""

    VLLM = "vllm"
    LLAMA_CPP = "llama-cpp"


class ModelResources(ApiObject):
    """CPU and memory of each replica (the engine and its weights loader alike)."""

    cpu: Quantity = Field(
        description=(
            "CPU of each replica, such as 4 or 3500m. llama-cpp: requested and its limit; "
            "llama-server gets as many threads (--threads, at least 1), so it is not throttled. "
            "vllm: requested, not capped (vLLM's scheduler and tokenizer threads burst)."
        )
    )
    memory: Quantity = Field(
        description=(
            "Memory of each replica, such as 8Gi, requested and its limit. llama-cpp: the GGUF "
            "file's size plus the KV cache of the context. A replica that uses more is OOM-killed "
            "and restarted."
        )
    )


def _owns(arg: str, flags: tuple[str, ...]) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for flag in flags)


_LLAMA_CPP_OWNED_FLAG_MESSAGE = (
    "must not set " + ", ".join(_LLAMA_CPP_DERIVED_FLAGS) + " (the operator derives them from the model's "
    "fields) nor a flag that downloads weights (" + ", ".join(_LLAMA_CPP_DOWNLOAD_FLAGS) + "): weights "
    "come only from source"
)


def _llama_cpp_owned_flag_failures(model: ModelSpec) -> Iterator[RuleFailure]:
    if model.engine is Engine.LLAMA_CPP:
        for index, arg in enumerate(model.extra_args):
            if _owns(arg, OPERATOR_OWNED_LLAMA_CPP_FLAGS):
                yield RuleFailure(("extraArgs", index), arg, _LLAMA_CPP_OWNED_FLAG_MESSAGE)


def _vllm_owned_flag_rule(rule: vllm.FlagRule) -> Rule:
    """One of ``vllm.OWNED_FLAG_RULES`` as a rule of a vLLM model (the apiserver limits each
    rule's estimated cost, hence several rules; the Python side checks the same flags)."""

    def failures(model: ModelSpec) -> Iterator[RuleFailure]:
        if model.engine is Engine.VLLM:
            for index, arg in enumerate(model.extra_args):
                if vllm.owned_flag(arg) in rule.flags:
                    yield RuleFailure(("extraArgs", index), arg, vllm.OWNED_FLAG_MESSAGE)

    return Rule(
        cel=f"self.engine != 'vllm' || !has(self.extraArgs) || self.extraArgs.all(a, !{rule.cel})",
        message=vllm.OWNED_FLAG_MESSAGE,
        field_path=".extraArgs",
        failures=failures,
    )


def _cel_list(flags: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{flag}'" for flag in flags) + "]"


def _vllm_only(field: str, wire: str, why: str) -> Rule:
    """A rule that ``field`` (a vLLM feature) is left out of a llama-cpp model."""
    message = f"{wire} is only for engine vllm ({why}); remove it from a llama-cpp model"
    return Rule(
        cel=f"self.engine != 'llama-cpp' || !has(self.{wire})",
        message=message,
        field_path=f".{wire}",
        failures=lambda model: (
            [RuleFailure((wire,), getattr(model, field), message)]
            if model.engine is Engine.LLAMA_CPP and getattr(model, field) is not None
            else []
        ),
    )


_NO_GPUS_FOR_LLAMA = (
    "engine llama-cpp runs on CPU: remove gpusPerReplica (or set it to 0), "
    "or use engine vllm on a GPU pool"
)
_GPUS_FOR_VLLM = "engine vllm needs GPUs: set gpusPerReplica to 1, 2, 4 or 8, or use engine llama-cpp on a CPU pool"
_RESOURCES_FOR_LLAMA = (
    "resources is required for engine llama-cpp, which runs in CPU memory: set resources.cpu and "
    "resources.memory, such as {cpu: \"4\", memory: 8Gi}"
)
_SEPARATE_VALUE = (
    "llama-server takes a flag's value as the next argument, not after '=': write the flag and its "
    "value as two entries, such as [--ctx-size, \"4096\"]"
)


def _joined_value_failures(model: ModelSpec) -> Iterator[RuleFailure]:
    if model.engine is Engine.LLAMA_CPP:
        for index, arg in enumerate(model.extra_args):
            if arg.startswith("-") and "=" in arg:
                yield RuleFailure(("extraArgs", index), arg, _SEPARATE_VALUE)


_CACHE_CLASS = (
    "cache.storageClassName is for a claim (layout SharedVolume, or PerReplica with engine vllm): with "
    "PerNode the weights are in a directory on the node, and a llama-cpp replica with PerReplica keeps "
    "its GGUF file in an emptyDir sized by cache.size; remove it, or set cache.layout: SharedVolume"
)
_STREAMER_ENGINE = (
    "loadFormat RunaiStreamer is for engine vllm (vLLM's Run:ai streamer reads safetensors); "
    "llama-server reads one GGUF file from disk: remove loadFormat, or set it to Copy"
)
_STREAMER_CACHE = (
    "loadFormat RunaiStreamer streams the weights from the bucket into GPU memory, so nothing is cached: "
    "remove cache.layout (PerReplica), or set loadFormat: Copy to keep a cache"
)
_STREAMER_SAFETENSORS = (
    "loadFormat RunaiStreamer reads safetensors only: source.path must be the key prefix of a model in "
    "safetensors (such as models/qwen2.5-72b/), not a " + ", ".join(NOT_SAFETENSORS_SUFFIXES) + " file; "
    "or set loadFormat: Copy"
)
#: The flags a streamed model's command line gets from loadFormat, in the spellings vLLM reads.
STREAMER_FLAGS = ("--load-format", "--load_format", "--model-loader-extra-config", "--model_loader_extra_config")
_STREAMER_FLAG = (
    "must not set " + ", ".join(STREAMER_FLAGS[::2]) + " with loadFormat RunaiStreamer: the operator sets "
    "them (--load-format runai_streamer, the streamer's concurrency); remove it, or set loadFormat: Copy"
)


def _streamer_flag_failures(model: ModelSpec) -> Iterator[RuleFailure]:
    if model.load_format is LoadFormat.RUNAI_STREAMER:
        for index, arg in enumerate(model.extra_args):
            if _owns(arg, STREAMER_FLAGS):
                yield RuleFailure(("extraArgs", index), arg, _STREAMER_FLAG)


def _claims_a_class(model: ModelSpec) -> bool:
    """Whether the model's cache is a claim, which a StorageClass provisions."""
    return model.cache.layout is CacheLayout.SHARED_VOLUME or (
        model.cache.layout is CacheLayout.PER_REPLICA and model.engine is Engine.VLLM)


_EVALUATION_AUTOSCALING = (
    "autoscaling and evaluation cannot be combined yet: the autoscaler scales one Deployment, and a model "
    "with evaluation has one per revision; remove autoscaling (set replicas) or evaluation"
)
_GGUF_PATH = (
    "engine llama-cpp serves one GGUF file: source.path must name it, such as models/tiny/model.gguf"
)


# === spec: models: evaluation ==================================================================


#: Bounds of an evaluation: few scorers keep the CEL cost of the judge rule small; a sample of
#: at most 10000 examples is what one Job scores in its window.
MAX_SCORERS = 8
MAX_EVALUATION_SAMPLE = 10000
DEFAULT_EVALUATION_SAMPLE = 100
DEFAULT_EVALUATION_TIMEOUT_SECONDS = 1800
MAX_READMITTED = 16
#: A canary takes at most half of the endpoints: past that it is the switch itself, untested.
MAX_CANARY_WEIGHT = 50
MAX_CANARY_SECONDS = 86400


class TextScorer(ApiObject):
    """A scorer comparing the answer with the example's ``expected`` text."""

    case_sensitive: bool = Field(
        default=False, description="Compare letters' case too. Default false: 'Doha' and 'doha' are the same answer.")


class RegexScorer(ApiObject):
    """A scorer reading the example's ``expected`` as a regular expression."""

    case_sensitive: bool = Field(default=False, description="Match letters' case too. Default false.")


#: What the judge is told when ``instructions`` is unset.
DEFAULT_JUDGE_INSTRUCTIONS = (
    "You grade answers. Reply with exactly one word: PASS if the answer gives the same facts as the "
    "expected answer, FAIL otherwise."
)


class JudgeScorer(ApiObject):
    """A scorer asking another model of the stack whether the answer is right: nothing leaves the country."""

    model: Name = Field(description=(
        "Logical name of the judge: another entry of spec.models (never the model under evaluation). It is "
        "asked, through its own Service, whether the answer matches the expected one."))
    instructions: str = Field(
        default=DEFAULT_JUDGE_INSTRUCTIONS, min_length=1, max_length=4096,
        description=("The judge's system prompt. Its reply counts as a pass when its first word is PASS "
                     "(any case). Default: a one-word PASS/FAIL grader."))


_ONE_SCORER = "set exactly one of exactMatch, contains, regex or judge in each entry of scorers"
_SCORER_KINDS = ("exactMatch", "contains", "regex", "judge")


class Scorer(ApiObject):
    """One way of scoring an answer, 1 (right) or 0 (wrong); an example's score is the mean of its scorers'."""

    exact_match: TextScorer | None = Field(default=None, description=(
        "The answer, trimmed of surrounding white space, equals the example's expected text."))
    contains: TextScorer | None = Field(default=None, description="The answer contains the example's expected text.")
    regex: RegexScorer | None = Field(default=None, description=(
        "The example's expected text is a regular expression (Python syntax) found somewhere in the answer."))
    judge: JudgeScorer | None = Field(default=None, description="Another model of the stack grades the answer.")

    object_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="[has(self.exactMatch), has(self.contains), has(self.regex), has(self.judge)].filter(x, x).size() == 1",
            message=_ONE_SCORER,
            field_path=None,
            failures=lambda scorer: (
                [] if len(scorer.kinds()) == 1 else
                [RuleFailure((), ", ".join(scorer.kinds()) or MISSING, _ONE_SCORER)]
            ),
        ),
    )

    def kinds(self) -> list[str]:
        """The scorers this entry sets, by wire name (exactly one in a valid entry)."""
        return [kind for kind in _SCORER_KINDS if getattr(self, _snake(kind)) is not None]


class EvaluationDataset(ApiObject):
    """A JSONL file of examples in one of the stack's S3 stores: one ``{"prompt": ..., "expected": ...}`` a line."""

    data_store: Name = Field(description=(
        "Name of the S3 store holding the dataset; must be declared in spec.dataStores, so the examples "
        "never leave the jurisdiction."))
    path: Annotated[
        str,
        Field(min_length=1, max_length=1024),
        matches(
            r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.jsonl$",
            "must be the key of a .jsonl object: letters, digits, '_', '.' and '-' separated by '/', "
            "such as evals/chat-ar.jsonl",
        ),
    ] = Field(description="Key of the JSONL object in the store, such as evals/chat-ar.jsonl.")


class Canary(ApiObject):
    """A share of live traffic sent to a candidate that passed its evaluation, before the switch."""

    weight: int = Field(
        ge=1, le=MAX_CANARY_WEIGHT, description=(
            f"Percent of the serving replicas the candidate runs beside them, from 1 to {MAX_CANARY_WEIGHT}: "
            "ceil(weight% of the serving replicas), at least 1. The logical Service selects both, and a plain "
            "Service spreads connections by endpoint, so the share is a share of endpoints, not a weighted router."))
    duration_seconds: int = Field(
        ge=1, le=MAX_CANARY_SECONDS, description=(
            f"Seconds the canary lasts, from 1 to {MAX_CANARY_SECONDS}, counted from when the Service first "
            "selected the candidate (an annotation on the Service, so an operator restart resumes the count) "
            "and ended by the operator's first pass after them. A candidate pod that turns unready or "
            "restarts in that time aborts the rollout (reason CanaryAborted): the current model keeps "
            "serving alone. Then the candidate scales to replicas and the Service switches to it."))


class Evaluation(ApiObject):
    """The in-country evaluation a new model must pass before it serves the logical name (blue/green)."""

    dataset: EvaluationDataset = Field(description="The examples, in an in-country store.")
    scorers: list[Scorer] = Field(
        min_length=1, max_length=MAX_SCORERS,
        description=f"How each answer is scored, 1 to {MAX_SCORERS} scorers; an example scores the mean of theirs.")
    threshold: float = Field(
        ge=0, le=1, description=(
            "The least mean score, from 0 to 1, at which the candidate passes and is switched to; below it "
            "the current model keeps serving."))
    sample_size: int = Field(
        default=DEFAULT_EVALUATION_SAMPLE, ge=1, le=MAX_EVALUATION_SAMPLE,
        description=(f"Examples scored: the dataset's first sampleSize lines, so a re-run scores the same ones. "
                     f"Default {DEFAULT_EVALUATION_SAMPLE}."))
    timeout_seconds: int = Field(
        default=DEFAULT_EVALUATION_TIMEOUT_SECONDS, ge=60, le=86400,
        description=(f"Seconds the evaluation Job may run (its activeDeadlineSeconds); one that runs out fails "
                     f"the candidate. Default {DEFAULT_EVALUATION_TIMEOUT_SECONDS}."))
    readmit: list[Annotated[str, Field(min_length=1, max_length=253)]] = set_list(
        max_items=MAX_READMITTED,
        description=(
            "Model ids (values of model) that may serve again without a new evaluation when they passed one "
            "before, as status.models[].history records: a rollback is changing model back. The history "
            "entry of a re-admission names the evaluation that admitted it first. Unset: every new model "
            "is evaluated."))
    canary: Canary | None = Field(default=None, description=(
        "After a pass, a share of live traffic goes to the candidate for a while before the switch (not "
        "for a model re-admitted by readmit, nor for the first model behind the name). Unset: the Service "
        "switches as soon as the candidate passes."))


def _evaluation_store_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    s3 = [store.name for store in spec.data_stores if store.s3 is not None]
    for index, model in enumerate(spec.models):
        if model.evaluation is not None and model.evaluation.dataset.data_store not in s3:
            yield RuleFailure(
                ("models", index, "evaluation", "dataset", "dataStore"), model.evaluation.dataset.data_store,
                f"must name an S3 store of spec.dataStores (S3 stores: {', '.join(s3) or 'none'}): the "
                "evaluation Job reads the dataset from the bucket")


def _judge_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    names = [model.name for model in spec.models]
    for index, model in enumerate(spec.models):
        for position, scorer in enumerate(model.evaluation.scorers if model.evaluation else []):
            if scorer.judge is None:
                continue
            if scorer.judge.model == model.name:
                message = "must name another model of spec.models: a model cannot judge itself"
            elif scorer.judge.model not in names:
                message = f"must name a model of spec.models (declared: {', '.join(names)}), so nothing leaves the country"
            else:
                continue
            yield RuleFailure(("models", index, "evaluation", "scorers", position, "judge", "model"),
                              scorer.judge.model, message)


_UNSTORED = ("self.models.filter(m, has(m.evaluation) && !(has(self.dataStores) && "
             "self.dataStores.exists(d, d.name == m.evaluation.dataset.dataStore && has(d.s3))))[0]")
_MISJUDGED = ("self.models.filter(m, has(m.evaluation) && m.evaluation.scorers.exists(s, has(s.judge) && "
              "(s.judge.model == m.name || !self.models.exists(o, o.name == s.judge.model))))[0]")


class ModelSpec(ApiObject):
    """A model served inside the jurisdiction, under a logical name applications use: by vLLM on
    GPU pools (the default) or by llama.cpp's llama-server on CPU pools."""

    name: Name = Field(
        description=(
            "Logical name applications use (spec.applications[].models) and the name of the model's "
            "Service. Stays the same when the model behind it changes."
        )
    )
    engine: Engine = Field(
        default=Engine.VLLM,
        description=(
            "The inference server. vllm (default): vLLM on a GPU pool, weights in Hugging Face layout, "
            "gpusPerReplica GPUs per replica. llama-cpp: llama.cpp's llama-server on a CPU pool (a pool "
            "without gpu), serving one GGUF file (source.path names it) with resources.cpu and "
            "resources.memory per replica; gpusPerReplica and autoscaling are vLLM-only. Both serve "
            "the same OpenAI-compatible API on the same Service, so applications do not change."
        ),
    )
    model: Annotated[
        str,
        Field(min_length=1, max_length=253),
        matches(r"^[^\s]+$", "must be a model id without spaces, such as Qwen/Qwen2.5-72B-Instruct"),
    ] = Field(
        description=(
            "The model served, usually its Hugging Face id (Qwen/Qwen2.5-72B-Instruct). The server "
            "answers to it as well as to the logical name (vLLM's served model names, llama-server's aliases)."
        )
    )
    source: ModelSource = Field(
        description=(
            "Where the weights come from. Hub downloads are switched off: weights "
            "come only from a declared store."
        )
    )
    node_pool: Name = Field(description=(
        "Name of the node pool the replicas run on; must be declared in spec.nodePools: a pool "
        "with gpu for engine vllm, a pool without gpu for engine llama-cpp."
    ))
    gpus_per_replica: Annotated[
        int,
        Field(ge=0, le=8),
        Check(
            message="must be 1, 2, 4 or 8 (the tensor-parallel sizes vLLM runs within one node), or 0 for llama-cpp",
            accepts=lambda count: count in GPU_COUNTS_PER_REPLICA,
            cel="self in [0, 1, 2, 4, 8]",
        ),
    ] | None = Field(
        default=None,
        description=(
            "GPUs of each replica, all on one node (vLLM --tensor-parallel-size): 1, 2, 4 or 8, at most "
            "the pool's gpu.perNode. Unset: 1 for engine vllm. Engine llama-cpp runs on CPU: leave it "
            "unset (or 0)."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS,
        description="Number of replicas. Default 1. Ignored while autoscaling is set: the autoscaler owns it.",
    )
    image: Image | None = Field(
        default=None,
        description=(
            "Container image of the engine. Unset: the vLLM or llama.cpp server image pinned by this "
            "operator release. A llama-cpp image runs llama-server as /app/llama-server, as llama.cpp's "
            "server images do."
        ),
    )
    resources: ModelResources | None = Field(
        default=None,
        description=(
            "CPU and memory of each replica and of its weights loader, requested so the replica is "
            "never BestEffort (extended resources such as nvidia.com/gpu do not count for QoS, so "
            "the kubelet would evict a GPU-only replica first). Required for engine llama-cpp: both "
            "requested and set as limits (Guaranteed QoS). Optional for vllm: requested, memory also "
            "as the limit, CPU uncapped (Burstable QoS); unset, "
            f"{VLLM_CPU_PER_GPU} CPU and {VLLM_MEMORY_PER_GPU_GIB}Gi of memory per GPU of the replica."
        ),
    )
    startup_timeout_seconds: int | None = Field(
        default=None,
        ge=60,
        le=7 * 86400,
        description=(
            "Seconds a replica's engine may take to load its weights (once copied) before it is "
            f"restarted: the startup probe's window. Unset: {LOAD_BASE_SECONDS} + the weights' size / "
            "weightsThroughput, so a 400 GB model gets a window made for 400 GB."
        ),
    )
    weights_throughput: Annotated[
        str,
        Field(max_length=64),
        Check(
            message=_THROUGHPUT_RULE,
            accepts=lambda text: _quantity_at_least(text, _MIN_THROUGHPUT),
            cel=(f"!self.startsWith('+') && isQuantity(self) && "
                 f"quantity(self).compareTo(quantity('{_MIN_THROUGHPUT}')) >= 0"),
        ),
    ] = Field(
        default=DEFAULT_WEIGHTS_THROUGHPUT,
        description=(
            "The slowest rate, in bytes per second, at which a replica is expected to copy its weights "
            "from the store and then load them (a quantity such as 50Mi or 1Gi; at least 1Mi). It sizes "
            f"the windows the operator renders: the rollout's progressDeadlineSeconds allows "
            f"{COPY_BASE_SECONDS} s + size / rate for the copy plus the startup window "
            f"(startupTimeoutSeconds, or {LOAD_BASE_SECONDS} s + size / rate). The size is cache.size, "
            "the most the weights can take. Default "
            f"{DEFAULT_WEIGHTS_THROUGHPUT}."
        ),
    )
    cache: ModelCache = Field(
        default_factory=ModelCache,
        **_object_default("Where the weights are kept once copied from an S3 store, and how many copies there are."),
    )
    load_format: LoadFormat = Field(
        default=LoadFormat.COPY,
        description=(
            "How the engine gets the weights from an S3 store. Copy (default): the loader copies them to "
            "disk (cache.layout says where) and the engine reads them there. RunaiStreamer: vLLM streams "
            "the safetensors straight from the bucket into GPU memory with the Run:ai Model Streamer "
            "(vllm serve s3://<bucket>/<path> --load-format runai_streamer), with the store's endpoint and "
            "credentials; nothing is copied or cached, and the store passes the same residency checks "
            "first. Engine vllm, an S3 store and a safetensors model only."
        ),
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Scale replicas on vLLM's queue depth (engine vllm only). Unset: a fixed number of replicas.",
    )
    evaluation: Evaluation | None = Field(
        default=None,
        description=(
            "An in-country evaluation every new model behind this name must pass before it serves: when "
            "model (or source) changes, the candidate starts in a Deployment of its own beside the current "
            "one, a Job (sovereign evaluate) scores it through its own Service, and only on a pass does the "
            "logical name's Service switch to it; on a fail the current model keeps serving and the stack "
            "says why. Unset: a change of model rolls the replicas in place."
        ),
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra command line arguments of the engine, appended as given: vLLM's (--max-model-len=32768) "
            "or llama-server's (--ctx-size 4096). Flags the operator derives from the other fields, and "
            "llama-server's download flags, are refused."
        ),
    )

    object_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.engine != 'llama-cpp' || !has(self.gpusPerReplica) || self.gpusPerReplica == 0",
            message=_NO_GPUS_FOR_LLAMA,
            field_path=".gpusPerReplica",
            failures=lambda model: (
                [RuleFailure(("gpusPerReplica",), model.gpus_per_replica, _NO_GPUS_FOR_LLAMA)]
                if model.engine is Engine.LLAMA_CPP and model.gpus_per_replica
                else []
            ),
        ),
        Rule(
            cel="self.engine != 'vllm' || !has(self.gpusPerReplica) || self.gpusPerReplica > 0",
            message=_GPUS_FOR_VLLM,
            field_path=".gpusPerReplica",
            failures=lambda model: (
                [RuleFailure(("gpusPerReplica",), 0, _GPUS_FOR_VLLM)]
                if model.engine is Engine.VLLM and model.gpus_per_replica == 0
                else []
            ),
        ),
        Rule(
            cel="self.engine != 'llama-cpp' || has(self.resources)",
            message=_RESOURCES_FOR_LLAMA,
            field_path=".resources",
            failures=lambda model: (
                [RuleFailure(("resources",), MISSING, _RESOURCES_FOR_LLAMA)]
                if model.engine is Engine.LLAMA_CPP and model.resources is None
                else []
            ),
        ),
        _vllm_only("autoscaling", "autoscaling", "it scales on vLLM's request queue"),
        Rule(
            cel="!has(self.evaluation) || !has(self.autoscaling)",
            message=_EVALUATION_AUTOSCALING,
            field_path=".autoscaling",
            failures=lambda model: (
                [RuleFailure(("autoscaling",), model.autoscaling, _EVALUATION_AUTOSCALING)]
                if model.evaluation is not None and model.autoscaling is not None
                else []
            ),
        ),
        Rule(
            cel=("!has(self.cache.storageClassName) || self.cache.layout == 'SharedVolume' || "
                 "(self.cache.layout == 'PerReplica' && self.engine == 'vllm')"),
            message=_CACHE_CLASS,
            field_path=".cache.storageClassName",
            failures=lambda model: (
                [RuleFailure(("cache", "storageClassName"), model.cache.storage_class_name, _CACHE_CLASS)]
                if model.cache.storage_class_name is not None and not _claims_a_class(model)
                else []
            ),
        ),
        Rule(
            cel="self.loadFormat != 'RunaiStreamer' || self.engine == 'vllm'",
            message=_STREAMER_ENGINE,
            field_path=".loadFormat",
            failures=lambda model: (
                [RuleFailure(("loadFormat",), model.load_format, _STREAMER_ENGINE)]
                if model.load_format is LoadFormat.RUNAI_STREAMER and model.engine is not Engine.VLLM
                else []
            ),
        ),
        Rule(
            cel=(
                "self.loadFormat != 'RunaiStreamer' || !has(self.extraArgs) || self.extraArgs.all(a, "
                f"!{_cel_list(STREAMER_FLAGS)}.exists(f, a == f || a.startsWith(f + '=')))"
            ),
            message=_STREAMER_FLAG,
            field_path=".extraArgs",
            failures=_streamer_flag_failures,
        ),
        Rule(
            cel="self.loadFormat != 'RunaiStreamer' || self.cache.layout == 'PerReplica'",
            message=_STREAMER_CACHE,
            field_path=".cache.layout",
            failures=lambda model: (
                [RuleFailure(("cache", "layout"), model.cache.layout, _STREAMER_CACHE)]
                if model.load_format is LoadFormat.RUNAI_STREAMER and model.cache.layout is not CacheLayout.PER_REPLICA
                else []
            ),
        ),
        Rule(
            cel=("self.loadFormat != 'RunaiStreamer' || !"
                 + _cel_list(NOT_SAFETENSORS_SUFFIXES) + ".exists(x, self.source.path.endsWith(x))"),
            message=_STREAMER_SAFETENSORS,
            field_path=".source.path",
            failures=lambda model: (
                [RuleFailure(("source", "path"), model.source.path, _STREAMER_SAFETENSORS)]
                if model.load_format is LoadFormat.RUNAI_STREAMER
                and model.source.path.endswith(NOT_SAFETENSORS_SUFFIXES)
                else []
            ),
        ),
        Rule(
            cel="self.engine != 'llama-cpp' || self.source.path.endsWith('.gguf')",
            message=_GGUF_PATH,
            field_path=".source.path",
            failures=lambda model: (
                [RuleFailure(("source", "path"), model.source.path, _GGUF_PATH)]
                if model.engine is Engine.LLAMA_CPP and not model.source.path.endswith(".gguf")
                else []
            ),
        ),
        Rule(
            cel=(
                "self.engine != 'llama-cpp' || !has(self.extraArgs) || self.extraArgs.all(a, "
                f"!{_cel_list(OPERATOR_OWNED_LLAMA_CPP_FLAGS)}.exists(f, a == f || a.startsWith(f + '=')))"
            ),
            message=_LLAMA_CPP_OWNED_FLAG_MESSAGE,
            field_path=".extraArgs",
            failures=_llama_cpp_owned_flag_failures,
        ),
        *(_vllm_owned_flag_rule(rule) for rule in vllm.OWNED_FLAG_RULES),
        Rule(
            cel=(
                "self.engine != 'llama-cpp' || !has(self.extraArgs) || "
                "!self.extraArgs.exists(a, a.startsWith('-') && a.contains('='))"
            ),
            message=_SEPARATE_VALUE,
            field_path=".extraArgs",
            failures=_joined_value_failures,
        ),
    )

    @property
    def gpus(self) -> int:
        """GPUs of each replica as served: gpusPerReplica, 1 when vLLM's is unset, 0 on CPU engines."""
        if self.engine is not Engine.VLLM:
            return 0
        return 1 if self.gpus_per_replica is None else self.gpus_per_replica


# === spec: applications ========================================================================


class EnvVar(ApiObject):
    """An environment variable of an application's container."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=256),
        matches(
            r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
            "must be an environment variable name: letters, digits, '_', '-' or '.', not starting with a digit",
        ),
    ] = Field(description="Name of the variable.")
    value: str = Field(default="", max_length=32768, description="Value of the variable. Default empty.")


class Resources(ApiObject):
    """Compute resources of an application's container, as in a Pod's resources."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Resources reserved for the container, such as cpu: 500m."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Most resources the container may use, such as memory: 2Gi."
    )


class Application(ApiObject):
    """A workload of the stack that uses its models and stores."""

    name: Name = Field(description="Name of the application's Deployment (and Service, when port is set).")
    image: Image = Field(description="Container image of the application.")
    models: list[Name] = set_list(
        max_items=MAX_REFERENCES,
        description=(
            "Names of models in spec.models the application calls. Each one's OpenAI-compatible URL is "
            "given to the container in the environment."
        ),
    )
    data_stores: list[Name] = set_list(
        max_items=MAX_REFERENCES,
        description=(
            "Names of stores in spec.dataStores the application uses: volumes are mounted, S3 "
            "stores' bucket, endpoint and credentials are given in the environment."
        ),
    )
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="Number of replicas. Default 1.")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "Port the container listens on; when set, a ClusterIP Service named "
            "after the application exposes it."
        ),
    )
    env: list[EnvVar] = map_list(max_items=64, description="Environment variables of the container.")
    resources: Resources | None = Field(default=None, description="Compute resources of the container.")


# === spec ======================================================================================


def _reference_rule(*, entries: str, ref: str, target: str, label: str) -> Rule:
    """A rule that each ``entries[].ref`` (a dotted wire path) names an entry of ``target``."""
    declared = f"has(self.{target}) && self.{target}.exists(t, t.name == e.{ref})"
    wire_path = tuple(ref.split("."))

    def failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
        names = [item.name for item in getattr(spec, _snake(target))]
        for index, entry in enumerate(getattr(spec, _snake(entries))):
            value = entry
            for part in wire_path:
                value = getattr(value, _snake(part))
            if value not in names:
                yield RuleFailure(
                    (entries, index, *wire_path),
                    value,
                    _undeclared(target, names),
                )

    first_bad = f"self.{entries}.filter(e, !({declared}))[0]"
    return Rule(
        cel=f"!has(self.{entries}) || self.{entries}.all(e, {declared})",
        message=f"every {ref} in spec.{entries} must name an entry of spec.{target}",
        message_expression=cel_format(
            f'{label} "%s": {ref} "%s" is not declared in spec.{target}', f"{first_bad}.name", f"{first_bad}.{ref}"
        ),
        field_path=f".{entries}",
        failures=failures,
    )


def _reference_list_rule(*, entries: str, ref: str, target: str, label: str) -> Rule:
    """A rule that every name in ``entries[].ref`` (a list) names an entry of ``target``."""
    undeclared = f"!(has(self.{target}) && self.{target}.exists(t, t.name == n))"

    def failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
        names = [item.name for item in getattr(spec, _snake(target))]
        for index, entry in enumerate(getattr(spec, _snake(entries))):
            for position, value in enumerate(getattr(entry, _snake(ref))):
                if value not in names:
                    yield RuleFailure(
                        (entries, index, ref, position),
                        value,
                        _undeclared(target, names),
                    )

    first_bad = f"self.{entries}.filter(e, has(e.{ref}) && e.{ref}.exists(n, {undeclared}))[0]"
    return Rule(
        cel=f"!has(self.{entries}) || self.{entries}.all(e, !has(e.{ref}) || !e.{ref}.exists(n, {undeclared}))",
        message=f"every name in spec.{entries}[].{ref} must name an entry of spec.{target}",
        message_expression=cel_format(
            f'{label} "%s": {ref} names "%s", which is not declared in spec.{target}',
            f"{first_bad}.name",
            f"{first_bad}.{ref}.filter(n, {undeclared})[0]",
        ),
        field_path=f".{entries}",
        failures=failures,
    )


def _undeclared(target: str, names: list[str]) -> str:
    return f"is not declared in spec.{target} (declared: {', '.join(dict.fromkeys(names)) or 'none'})"


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _gpus_fit_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    per_node = {pool.name: pool.gpu.per_node for pool in spec.node_pools if pool.gpu is not None}
    for index, model in enumerate(spec.models):
        if model.node_pool in per_node and model.gpus > per_node[model.node_pool]:
            yield RuleFailure(
                ("models", index, "gpusPerReplica"),
                model.gpus,
                f"must be at most gpu.perNode ({per_node[model.node_pool]}) of nodePool {model.node_pool!r}: "
                "a replica's GPUs are all on one node",
            )


def _engine_pool_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    has_gpus = {pool.name: pool.gpu is not None for pool in spec.node_pools}
    for index, model in enumerate(spec.models):
        if model.node_pool not in has_gpus or has_gpus[model.node_pool] == (model.engine is Engine.VLLM):
            continue
        yield RuleFailure(("models", index, "nodePool"), model.node_pool, _engine_pool_message(model.engine))


def _engine_pool_message(engine: Engine) -> str:
    if engine is Engine.VLLM:
        return ("is a CPU pool (no gpu), and engine vllm needs GPUs: name a pool with gpu, "
                "or set engine: llama-cpp to serve a GGUF file on CPU")
    return ("is a GPU pool, and engine llama-cpp runs on CPU: name a pool without gpu "
            "(add one to spec.nodePools), or use engine vllm")


def _s3_region_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    for index, store in enumerate(spec.data_stores):
        if store.s3 is not None and store.s3.region not in spec.residency.regions:
            yield RuleFailure(
                ("dataStores", index, "s3", "region"),
                store.s3.region,
                f"is not one of spec.residency.regions ({', '.join(spec.residency.regions)})",
            )


_S3_ONLY = (
    "is for S3 sources, and dataStore {store!r} is a volume, which every replica mounts read-only as it "
    "is (nothing is copied): remove it, or take the weights from an S3 store"
)


def _s3_only_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    volumes = {store.name for store in spec.data_stores if store.volume is not None}
    for index, model in enumerate(spec.models):
        if model.source.data_store not in volumes:
            continue
        if model.cache.layout is not CacheLayout.PER_REPLICA:
            yield RuleFailure(("models", index, "cache", "layout"), model.cache.layout,
                              f"cache.layout {model.cache.layout.value} "
                              + _S3_ONLY.format(store=model.source.data_store))
        if model.load_format is not LoadFormat.COPY:
            yield RuleFailure(("models", index, "loadFormat"), model.load_format,
                              f"loadFormat {model.load_format.value} " + _S3_ONLY.format(store=model.source.data_store))


def _name_clash_failures(spec: SovereignStackSpec) -> Iterator[RuleFailure]:
    models = {model.name for model in spec.models}
    for index, app in enumerate(spec.applications):
        if app.name in models:
            yield RuleFailure(
                ("applications", index, "name"),
                app.name,
                "is also the name of a model; a model and an application each get a Deployment "
                "and a Service of their name, so rename one of them",
            )


# The first model too wide for its pool, and the first S3 store outside the regions, for messages.
_TOO_WIDE = (
    "self.models.filter(m, has(m.gpusPerReplica) && self.nodePools.exists(p, p.name == m.nodePool && has(p.gpu) "
    "&& m.gpusPerReplica > p.gpu.perNode))[0]"
)
_MISPLACED = "self.models.filter(m, self.nodePools.exists(p, p.name == m.nodePool && has(p.gpu) != (m.engine == 'vllm')))[0]"
_OUTSIDE = "self.dataStores.filter(d, has(d.s3) && !(d.s3.region in self.residency.regions))[0]"
_CLASH = "self.applications.filter(a, self.models.exists(m, m.name == a.name))[0]"
# A model that caches or streams its weights from a volume store.
_NOT_COPIED = "(m.cache.layout != 'PerReplica' || m.loadFormat != 'Copy')"
_FROM_VOLUME = "self.dataStores.exists(d, d.name == m.source.dataStore && has(d.volume))"
_VOLUME_CACHED = f"self.models.filter(m, {_NOT_COPIED} && {_FROM_VOLUME})[0]"


class SovereignStackSpec(ApiObject):
    """The desired sovereign AI deployment: where it may live, its node pools, data stores,
    models and applications."""

    residency: Residency = Field(description="Where the stack's workloads and data may live.")
    node_pools: list[NodePool] = map_list(
        max_items=MAX_NODE_POOLS,
        description="Node pools the models run on: GPU pools for vLLM, CPU pools for llama.cpp. Names are unique.",
    )
    data_stores: list[DataStore] = map_list(
        max_items=MAX_DATA_STORES,
        description="In-country stores of data and model weights: S3 buckets and volumes. Names are unique.",
    )
    models: list[ModelSpec] = map_list(
        max_items=MAX_MODELS,
        description="Models served by vLLM on GPU pools or by llama.cpp on CPU pools. Names are unique.",
    )
    applications: list[Application] = map_list(
        max_items=MAX_APPLICATIONS, description="Workloads that use the models and stores. Names are unique."
    )

    object_rules: ClassVar[tuple[Rule, ...]] = (
        _reference_rule(entries="models", ref="nodePool", target="nodePools", label="model"),
        _reference_rule(entries="models", ref="source.dataStore", target="dataStores", label="model"),
        Rule(
            cel=(
                "!has(self.models) || !has(self.nodePools) || self.models.all(m, !has(m.gpusPerReplica) || "
                "self.nodePools.all(p, p.name != m.nodePool || !has(p.gpu) || m.gpusPerReplica <= p.gpu.perNode))"
            ),
            message="gpusPerReplica of each model must be at most gpu.perNode of its nodePool",
            message_expression=cel_format(
                'model "%s": gpusPerReplica %d is more than gpu.perNode of nodePool "%s"; '
                "a replica's GPUs are all on one node",
                f"{_TOO_WIDE}.name",
                f"{_TOO_WIDE}.gpusPerReplica",
                f"{_TOO_WIDE}.nodePool",
            ),
            field_path=".models",
            failures=_gpus_fit_failures,
        ),
        Rule(
            cel=(
                "!has(self.models) || !has(self.nodePools) || self.models.all(m, "
                "self.nodePools.all(p, p.name != m.nodePool || has(p.gpu) == (m.engine == 'vllm')))"
            ),
            message=(
                "the nodePool of each model must suit its engine: a pool with gpu for vllm, "
                "a pool without gpu for llama-cpp"
            ),
            message_expression=cel_format(
                'model "%s": engine %s cannot run on nodePool "%s"; vllm needs a pool with gpu, '
                "llama-cpp a pool without gpu",
                f"{_MISPLACED}.name",
                f"{_MISPLACED}.engine",
                f"{_MISPLACED}.nodePool",
            ),
            field_path=".models",
            failures=_engine_pool_failures,
        ),
        _reference_list_rule(entries="applications", ref="models", target="models", label="application"),
        _reference_list_rule(entries="applications", ref="dataStores", target="dataStores", label="application"),
        Rule(
            cel="!has(self.dataStores) || self.dataStores.all(d, !has(d.s3) || d.s3.region in self.residency.regions)",
            message="the s3.region of each data store must be one of spec.residency.regions",
            message_expression=cel_format(
                'dataStore "%s": s3.region "%s" is not one of spec.residency.regions',
                f"{_OUTSIDE}.name",
                f"{_OUTSIDE}.s3.region",
            ),
            field_path=".dataStores",
            failures=_s3_region_failures,
        ),
        Rule(
            cel="!has(self.applications) || !has(self.models) || "
                "self.applications.all(a, self.models.all(m, m.name != a.name))",
            message="an application may not have the name of a model (each gets a Deployment and a Service of its name)",
            message_expression=cel_format(
                'application "%s" has the name of a model; each gets a Deployment and a Service '
                "of its name, so rename one of them",
                f"{_CLASH}.name",
            ),
            field_path=".applications",
            failures=_name_clash_failures,
        ),
        Rule(
            cel=f"!has(self.models) || !has(self.dataStores) || !self.models.exists(m, {_NOT_COPIED} && {_FROM_VOLUME})",
            message="cache.layout and loadFormat are for models whose source is an S3 store",
            message_expression=cel_format(
                'model "%s": cache.layout and loadFormat are for S3 sources, and dataStore "%s" is a volume, '
                "which every replica mounts as it is: leave both unset",
                f"{_VOLUME_CACHED}.name",
                f"{_VOLUME_CACHED}.source.dataStore",
            ),
            field_path=".models",
            failures=_s3_only_failures,
        ),
        Rule(
            cel=("!has(self.models) || self.models.all(m, !has(m.evaluation) || (has(self.dataStores) && "
                 "self.dataStores.exists(d, d.name == m.evaluation.dataset.dataStore && has(d.s3))))"),
            message="evaluation.dataset.dataStore of each model must name an S3 store of spec.dataStores",
            message_expression=cel_format(
                'model "%s": evaluation.dataset.dataStore "%s" is not an S3 store of spec.dataStores; '
                "the evaluation Job reads the dataset from the bucket",
                f"{_UNSTORED}.name", f"{_UNSTORED}.evaluation.dataset.dataStore"),
            field_path=".models",
            failures=_evaluation_store_failures,
        ),
        Rule(
            cel=("!has(self.models) || self.models.all(m, !has(m.evaluation) || m.evaluation.scorers.all(s, "
                 "!has(s.judge) || (s.judge.model != m.name && self.models.exists(o, o.name == s.judge.model))))"),
            message="evaluation.scorers[].judge.model must name another model of spec.models",
            message_expression=cel_format(
                'model "%s": a judge in evaluation.scorers is the model itself or not declared in spec.models; '
                "name another model of the stack",
                f"{_MISJUDGED}.name"),
            field_path=".models",
            failures=_judge_failures,
        ),
    )


# === status ====================================================================================


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]
"""A point in time, written as RFC 3339 in UTC to the second, as Kubernetes does."""


class ConditionType(StrEnum):
    """The condition types of a stack. Ready summarises the others."""

    READY = "Ready"
    RESIDENCY_COMPLIANT = "ResidencyCompliant"
    NODE_POOLS_READY = "NodePoolsReady"
    DATA_STORES_READY = "DataStoresReady"
    MODELS_READY = "ModelsReady"
    APPLICATIONS_READY = "ApplicationsReady"
    GPU_HEALTHY = "GPUHealthy"
    # kstatus's standard conditions, which Flux and `kubectl wait`-style tools read on custom
    # resources (kstatus ignores Ready there): True while the stack is on its way to Ready, True
    # when it cannot get there without a person.
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class ConditionStatus(StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusObject):
    """One aspect of the stack's state, in the shape of Kubernetes' metav1.Condition."""

    type: Annotated[
        str,
        Field(min_length=1, max_length=316),
        matches(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            "must be a CamelCase condition type such as Ready",
        ),
    ] = Field(description=(
        "Type of the condition: Ready, ResidencyCompliant, NodePoolsReady, DataStoresReady, "
        "ModelsReady, ApplicationsReady, GPUHealthy, and kstatus's Reconciling (True while on the "
        "way to Ready) and Stalled (True when Ready needs a person: invalid spec, refused object, "
        "store outside the rules, enforced residency violation)."
    ))
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the stack the condition was computed for."
    )
    last_transition_time: Timestamp = Field(description="When the status last changed.")
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024),
        matches(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", "must be a CamelCase reason such as ModelsLoading"),
    ] = Field(description="Why the condition has its status, as a CamelCase word machines can match on.")
    message: str = Field(default="", max_length=32768, description="What a person should know, in words.")


class ModelCacheStatus(StatusObject):
    """Observed state of a model's cache."""

    layout: str = Field(default="", description="cache.layout: PerReplica, PerNode or SharedVolume.")
    name: str = Field(default="", description=(
        "The cache: the shared claim and its loader Job (SharedVolume), or the node directory (PerNode)."))
    state: str = Field(default="", description=(
        "SharedVolume: Filling (the loader Job runs; no replica starts before it succeeded), Filled, "
        "Failed, or Unavailable (the cluster cannot provide it; the message says why)."))
    files: int = Field(default=0, ge=0, description="Files in the filled cache.")
    bytes: int = Field(default=0, ge=0, description="Bytes in the filled cache.")
    downloaded_bytes: int = Field(default=0, ge=0, description=(
        "Bytes the loader read from the store to fill it (0 when it found every file already verified)."))
    verified: bool = Field(default=False, description=(
        "Every file was checked against its object's ETag (not only its size)."))
    filled_at: Timestamp | None = Field(default=None, description="When the loader Job completed.")
    message: str = Field(default="", description="Progress, or what went wrong, in words.")


class WorstExample(StatusObject):
    """One of the examples a candidate scored worst on, shortened for status."""

    prompt: str = Field(default="", description="The example's prompt (at most 200 characters).")
    expected: str = Field(default="", description="The expected answer (at most 200 characters).")
    answer: str = Field(default="", description="The candidate's answer (at most 200 characters).")
    score: float = Field(default=0, ge=0, le=1, description="The example's score, from 0 to 1.")


class EvaluationEvidence(StatusObject):
    """What an evaluation of one model found, as an auditor needs it: which data, which result."""

    model: str = Field(default="", description="The model id evaluated.")
    dataset: str = Field(default="", description="The dataset object, as s3://<bucket>/<key>.")
    version: str = Field(default="", description="The dataset object's version: its VersionId, else its ETag.")
    examples: int = Field(default=0, ge=0, description="Examples scored.")
    score: float = Field(default=0, ge=0, le=1, description="Mean score of the examples, from 0 to 1.")
    threshold: float = Field(default=0, ge=0, le=1, description="evaluation.threshold it was held to.")
    passed: bool = Field(default=False, description="score reached threshold.")
    finished_at: Timestamp | None = Field(default=None, description="When the evaluation finished.")
    job: str = Field(default="", description="Name of the evaluation Job, whose pod log holds the full report.")
    worst_examples: list[WorstExample] = Field(
        default_factory=list, description="The examples it scored worst on (at most 3).")


class ModelRolloutStatus(StatusObject):
    """Where a model's blue/green rollout stands (models with evaluation only)."""

    state: str = Field(default="", description=(
        "Serving (the spec's model serves the name), CandidateStarting (its Deployment starts beside the "
        "current one), Evaluating (the Job scores it), Canary (it passed; evaluation.canary's share of the "
        "endpoints serves it beside the current one), Switching (the Service moves to it), Failed (it did not "
        "pass, or its canary was aborted; the current model keeps serving)."))
    candidate: str = Field(default="", description="The model id waiting to serve, while there is one.")
    revision: str = Field(default="", description="The candidate's revision (a digest of model and source).")
    message: str = Field(default="", description="What is happening, in words.")
    evaluation: EvaluationEvidence | None = Field(default=None, description="The candidate's evaluation, once finished.")


class ServingRecord(StatusObject):
    """One model's time behind a logical name: the lineage an auditor reads."""

    model: str = Field(description="The model id that served.")
    revision: str = Field(default="", description="Its revision (a digest of model and source).")
    since: Timestamp = Field(description="When the logical name's Service switched to it.")
    until: Timestamp | None = Field(default=None, description="When it stopped serving; unset while it serves.")
    admission: str = Field(default="", description=(
        "How it was admitted: Evaluated (passed the evidence below), Readmitted (listed in evaluation.readmit, "
        "the evidence is that of its earlier pass), or Initial (it served before evaluation was set)."))
    evaluation: EvaluationEvidence | None = Field(default=None, description="The evaluation that admitted it.")


class ModelStatus(StatusObject):
    """Observed state of one model."""

    name: str = Field(description="Name of the model in spec.models.")
    model: str = Field(default="", description="The model being served.")
    replicas: int = Field(default=0, ge=0, description="Replicas that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas serving requests.")
    endpoint: str = Field(default="", description=(
        "OpenAI-compatible base URL inside the cluster, such as "
        "http://chat.ns.svc:8000/v1."
    ))
    cache: ModelCacheStatus | None = Field(default=None, description=(
        "The model's weights cache, for weights copied from an S3 store (unset for a volume store "
        "or a streamed model)."))
    rollout: ModelRolloutStatus | None = Field(default=None, description=(
        "The blue/green rollout of a model with evaluation: its state, candidate and evaluation."))
    history: list[ServingRecord] = Field(default_factory=list, max_length=32, description=(
        "Which model served this name, from when to when, and the evaluation that admitted it, oldest "
        "first (the last 32)."))


class DataStoreStatus(StatusObject):
    """Observed state of one data store."""

    name: str = Field(description="Name of the store in spec.dataStores.")
    ready: bool = Field(default=False, description="The store exists, is reachable and is inside the jurisdiction.")
    location: str = Field(default="", description="Where the data is: s3://<bucket> or persistentvolumeclaim/<name>.")
    region: str = Field(default="", description="Region the store was observed in.")
    reason: str = Field(default="", description="CamelCase reason for ready, such as BucketOutsideRegions.")
    message: str = Field(default="", description="Details, in words.")


class NodePoolStatus(StatusObject):
    """Observed state of one node pool."""

    name: str = Field(description="Name of the pool in spec.nodePools.")
    nodes: int = Field(default=0, ge=0, description="Nodes in the pool.")
    ready_nodes: int = Field(default=0, ge=0, description="Nodes in the pool that are Ready.")
    gpus: int = Field(default=0, ge=0, description="Allocatable GPUs on the pool's nodes.")
    instance_types: list[str] = Field(
        default_factory=list,
        description="Instance types of the pool's nodes (node.kubernetes.io/instance-type), each once, sorted.",
    )
    gpu_names: list[str] = Field(
        default_factory=list,
        description=(
            "The GPUs the pool's nodes have, each once, sorted: for a Karpenter pool the provider's "
            "GPU-name label of each launched instance (karpenter.k8s.aws/instance-gpu-name, ...; the "
            "provider sets it from the instance, unlike gpu.product, which Karpenter copies from the "
            "NodePool), else nvidia.com/gpu.product as GPU feature discovery set it."
        ),
    )
    unhealthy_gpus: int = Field(
        default=0, ge=0, alias="unhealthyGPUs", description="GPUs on the pool's nodes that NVML reports unhealthy."
    )


class ApplicationStatus(StatusObject):
    """Observed state of one application."""

    name: str = Field(description="Name of the application in spec.applications.")
    replicas: int = Field(default=0, ge=0, description="Replicas that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas that are ready.")


class ResidencyViolation(StatusObject):
    """An object of the stack found breaking a residency rule."""

    kind: str = Field(description="Kind of the object, such as Pod or PersistentVolume.")
    namespace: str = Field(default="", description="Namespace of the object; empty for cluster-scoped objects.")
    name: str = Field(description="Name of the object.")
    rule: str = Field(description="The rule broken, as a CamelCase reason such as PodOutsideRegions.")
    message: str = Field(default="", description="What is wrong, in words.")
    since: Timestamp = Field(description="When the violation was first seen.")


class SovereignStackStatus(StatusObject):
    """Observed state of the stack, written by the operator."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec the status describes."
    )
    conditions: list[Condition] = map_list(
        key="type",
        max_items=32,
        description=(
            "Ready summarises the others: ResidencyCompliant, NodePoolsReady, DataStoresReady, ModelsReady, "
            "ApplicationsReady, GPUHealthy."
        ),
    )
    models_ready: str = Field(default="", description="Models with every replica ready, out of all, such as 1/2.")
    violation_count: int = Field(default=0, ge=0, description="Number of entries in violations.")
    models: list[ModelStatus] = map_list(max_items=MAX_MODELS, description="Observed state of each model.")
    data_stores: list[DataStoreStatus] = map_list(
        max_items=MAX_DATA_STORES, description="Observed state of each data store."
    )
    node_pools: list[NodePoolStatus] = map_list(
        max_items=MAX_NODE_POOLS, description="Observed state of each node pool."
    )
    applications: list[ApplicationStatus] = map_list(
        max_items=MAX_APPLICATIONS, description="Observed state of each application."
    )
    violations: list[ResidencyViolation] = Field(
        default_factory=list, description="Objects of the stack found breaking residency rules, oldest first."
    )


# === the resource ==============================================================================


class ObjectMeta(ApiObject):
    """The parts of metadata the operator reads; everything else is kept as it came."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, description="Name of the stack.")
    generate_name: str | None = Field(default=None, description="Prefix of a generated name.")
    namespace: str | None = Field(default=None, description="Namespace of the stack.")
    uid: str | None = Field(default=None, description="UID of the stack.")
    generation: int | None = Field(default=None, description="Generation of the spec.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


class SovereignStack(ApiObject):
    """A sovereign AI deployment: node pools, model servers (vLLM on GPUs, llama.cpp on CPUs),
    in-country data stores and the applications that use them, kept inside one jurisdiction."""

    api_version: Literal["sovereign.ai/v1alpha1"] = Field(default=API_VERSION, description="sovereign.ai/v1alpha1")
    kind: Literal["SovereignStack"] = Field(default=KIND, description="SovereignStack")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: SovereignStackSpec = Field(description="The desired deployment.")
    status: SovereignStackStatus | None = Field(default=None, description="Observed state, written by the operator.")
