"""The simulated fleet: turns ``fleet.yaml`` into KWOK Node objects and Karpenter's instance types.

Pure: ``nodes(...)`` returns Node manifests (with capacity in their status, which KWOK keeps);
``karpenter_instance_types(...)`` the instance-types file of Karpenter's KWOK provider, offered
in the fleet's zones; ``devcluster.cluster`` creates the nodes and starts Karpenter with the
file. ``sovereign dev up --nodes/--regions`` reshape the fleet through ``scaled``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from sovereign.api.models import GPU_NAME_LABELS

FLEET_FILE = Path(__file__).with_name("fleet.yaml")
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
# KWOK only manages nodes carrying this annotation (see --manage-nodes-with-annotation-selector).
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
#: The label the local cloud's GPU instance types name their GPU with (``gpuName`` pins it).
KWOK_GPU_NAME_LABEL = GPU_NAME_LABELS["karpenter.kwok.sh"]
#: Karpenter buys both; a pool's ``capacityTypes`` chooses.
CAPACITY_TYPES = ("on-demand", "spot")
#: What spot costs against on-demand, so Karpenter's price order is that of a cloud.
SPOT_DISCOUNT = 0.4
#: The in-country region where the tests and benchmarks run their real node.
REAL_NODE_REGION = "me-central-1"


def load(path: Path = FLEET_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def scaled(fleet: dict[str, Any], *, gpu_nodes_per_region: int | None = None,
           regions: list[str] | None = None) -> dict[str, Any]:
    """A copy of ``fleet`` with GPU groups resized and groups limited to ``regions``."""
    result = copy.deepcopy(fleet)
    groups = result["groups"]
    if regions is not None:
        groups = [g for g in groups if g["region"] in regions]
    if gpu_nodes_per_region is not None:
        for group in groups:
            if "gpu" in group:
                group["count"] = gpu_nodes_per_region
    result["groups"] = groups
    return result


def with_real_node(fleet: dict[str, Any], *, region: str) -> dict[str, Any]:
    """A copy of ``fleet`` in which the real node is the only CPU node of ``region``: KWOK's CPU
    groups there get no nodes (their zones stay, for ``real_node_labels``).

    A stack pins its applications' pods to its regions only (an application names no pool), so
    with a KWOK CPU node beside the real one the scheduler could put an application where no
    container ever runs. GPU nodes stay: they are tainted, and only GPU pods go there.
    """
    result = copy.deepcopy(fleet)
    for group in result["groups"]:
        if group["region"] == region and "gpu" not in group:
            group["count"] = 0
    return result


def real_node_labels(fleet: dict[str, Any], *, region: str) -> dict[str, str]:
    """The labels a real node in ``region`` registers with: the region and the first zone the
    fleet gives that region, like its KWOK nodes (the kubelet adds hostname, os and arch)."""
    zones = [zone for group in fleet["groups"] if group["region"] == region for zone in group["zones"]]
    if not zones:
        regions = sorted({group["region"] for group in fleet["groups"]})
        raise ValueError(f"real_node: region {region!r} is not in the fleet; choose one of {regions}")
    return {REGION_LABEL: region, ZONE_LABEL: zones[0],
            "node.kubernetes.io/instance-type": "real-cpu", "type": "real"}


def nodes(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """The Node manifests of ``fleet``, in a stable order."""
    gpu = fleet["gpu"]
    result = []
    for group in fleet["groups"]:
        for index in range(group["count"]):
            zone = group["zones"][index % len(group["zones"])]
            name = f"{group['prefix']}-{index}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "kwok-gpu" if "gpu" in group else "kwok-cpu",
                REGION_LABEL: group["region"],
                ZONE_LABEL: zone,
                "type": "kwok",
            }
            capacity = dict(group["capacity"])
            taints = []
            if "gpu" in group:
                labels.update({
                    GPU_PRODUCT_LABEL: group["gpu"]["product"],
                    GPU_COUNT_LABEL: str(group["gpu"]["count"]),
                    GPU_MEMORY_LABEL: str(group["gpu"]["memoryMiB"]),
                    "nvidia.com/gpu.present": "true",
                })
                capacity[gpu["resource"]] = str(group["gpu"]["count"])
                taints.append(dict(gpu["taint"]))
            result.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": dict(KWOK_ANNOTATION)},
                "spec": {"taints": taints} if taints else {},
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
    return result


def karpenter_instance_types(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """Karpenter's KWOK provider's instance types (its ``INSTANCE_TYPES_FILE_PATH`` JSON): each
    type of ``fleet.yaml``'s ``karpenter`` section offered in every zone of the fleet's regions,
    on-demand and spot. Each offering names its zone's region, so a launched node carries the
    region of its zone (a NodePool spanning regions could otherwise get a node labelled with
    none). GPU types name their GPU on ``KWOK_GPU_NAME_LABEL``; CPU types require its absence,
    so a pool pinned to a GPU never gets one."""
    zones = sorted({(group["region"], zone) for group in fleet["groups"] for zone in group["zones"]})
    types = []
    for spec in fleet["karpenter"]["instanceTypes"]:
        gpu = spec.get("gpu")
        resources = dict(spec["capacity"])
        if gpu:
            resources[fleet["gpu"]["resource"]] = str(gpu["count"])
            named = {"key": KWOK_GPU_NAME_LABEL, "operator": "In", "values": [gpu["name"]]}
        else:
            named = {"key": KWOK_GPU_NAME_LABEL, "operator": "DoesNotExist"}
        offerings = [
            {"Price": round(spec["price"] * (1 - SPOT_DISCOUNT if capacity == "spot" else 1), 4),
             "Available": True,
             "Requirements": [
                 {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": [capacity]},
                 {"key": ZONE_LABEL, "operator": "In", "values": [zone]},
                 {"key": REGION_LABEL, "operator": "In", "values": [region]},
                 named,
             ]}
            for region, zone in zones for capacity in CAPACITY_TYPES
        ]
        types.append({"name": spec["name"], "architecture": "amd64", "operatingSystems": ["linux"],
                      "resources": resources, "offerings": offerings})
    return types


def local_gpu_name(fleet: dict[str, Any], *, product: str) -> str:
    """The local cloud's GPU name (``KWOK_GPU_NAME_LABEL``) of the instance types with ``product``."""
    names = {t["gpu"]["product"]: t["gpu"]["name"] for t in fleet["karpenter"]["instanceTypes"] if "gpu" in t}
    if product not in names:
        raise ValueError(f"no instance type of the local cloud has GPU {product!r}; fleet.yaml offers {sorted(names)}")
    return names[product]
