"""The fleet file yields the simulated nodes the tests and `dev up` rely on."""

import pytest

from sovereign_dev import fleet


def test_fleet_has_gpu_nodes_in_two_regions_and_cpu_nodes():
    nodes = fleet.nodes(fleet.load())
    gpu = [n for n in nodes if "nvidia.com/gpu" in n["status"]["capacity"]]
    cpu = [n for n in nodes if "nvidia.com/gpu" not in n["status"]["capacity"]]
    assert {n["metadata"]["labels"][fleet.REGION_LABEL] for n in gpu} == {"me-central-1", "eu-west-1"}
    assert len([n for n in gpu if n["metadata"]["labels"][fleet.REGION_LABEL] == "me-central-1"]) >= 2
    assert cpu
    for node in gpu:
        labels = node["metadata"]["labels"]
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert labels["nvidia.com/gpu.count"] == "8"
        assert labels[fleet.ZONE_LABEL].startswith(labels[fleet.REGION_LABEL])
        assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present",
                                           "effect": "NoSchedule"}]
        assert node["metadata"]["annotations"] == fleet.KWOK_ANNOTATION


def test_scaled_fleet_resizes_gpu_groups_and_drops_regions():
    shaped = fleet.scaled(fleet.load(), gpu_nodes_per_region=1, regions=["me-central-1"])
    nodes = fleet.nodes(shaped)
    assert {n["metadata"]["labels"][fleet.REGION_LABEL] for n in nodes} == {"me-central-1"}
    assert len([n for n in nodes if "nvidia.com/gpu" in n["status"]["capacity"]]) == 1


def test_node_names_are_unique_and_stable():
    first = [n["metadata"]["name"] for n in fleet.nodes(fleet.load())]
    assert len(first) == len(set(first))
    assert first == [n["metadata"]["name"] for n in fleet.nodes(fleet.load())]


def test_real_node_takes_the_region_and_first_zone_the_fleet_gives_that_region():
    labels = fleet.real_node_labels(fleet.load(), region="eu-west-1")
    assert labels[fleet.REGION_LABEL] == "eu-west-1"
    assert labels[fleet.ZONE_LABEL] == "eu-west-1a"
    assert labels["type"] == "real"


def test_real_node_in_a_region_without_nodes_is_refused_with_the_choices():
    import pytest

    with pytest.raises(ValueError, match=r"real_node: region 'us-east-1' is not in the fleet; "
                                         r"choose one of \['eu-west-1', 'me-central-1'\]"):
        fleet.real_node_labels(fleet.load(), region="us-east-1")


def test_with_a_real_node_the_region_has_no_kwok_cpu_node_and_keeps_its_gpu_nodes_and_zones():
    """Applications name no pool: the real node must be the only CPU node of its region, or an
    application could be scheduled where no container runs."""
    whole = fleet.load()
    shaped = fleet.with_real_node(whole, region="me-central-1")
    by_region = {}
    for node in fleet.nodes(shaped):
        gpu = "nvidia.com/gpu" in node["status"]["capacity"]
        by_region.setdefault((node["metadata"]["labels"][fleet.REGION_LABEL], gpu), []).append(node)
    assert ("me-central-1", False) not in by_region
    assert by_region[("me-central-1", True)] and by_region[("eu-west-1", False)]
    assert fleet.real_node_labels(shaped, region="me-central-1") == fleet.real_node_labels(
        whole, region="me-central-1")
    assert whole == fleet.load(), "the fleet given is not changed in place"


def _labels(offering):
    return {r["key"]: r.get("values") for r in offering["Requirements"]}


def test_karpenter_instance_types_are_offered_in_every_zone_with_its_region():
    shaped = fleet.load()
    types = {t["name"]: t for t in fleet.karpenter_instance_types(shaped)}
    zones = {(g["region"], z) for g in shaped["groups"] for z in g["zones"]}

    assert {"gpu-h100-8x", "gpu-a100-8x", "gpu-l40s-4x"} < set(types)
    for instance_type in types.values():
        offered = {(_labels(o)[fleet.REGION_LABEL][0], _labels(o)[fleet.ZONE_LABEL][0])
                   for o in instance_type["offerings"]}
        assert offered == zones, instance_type["name"]
        assert {_labels(o)[fleet.CAPACITY_TYPE_LABEL][0] for o in instance_type["offerings"]} == {"on-demand", "spot"}


def test_gpu_instance_types_name_their_gpu_on_the_kwok_label_and_never_on_the_product_label():
    types = {t["name"]: t for t in fleet.karpenter_instance_types(fleet.load())}

    h100 = types["gpu-h100-8x"]
    assert h100["resources"]["nvidia.com/gpu"] == "8"
    assert all(_labels(o)[fleet.KWOK_GPU_NAME_LABEL] == ["h100"] for o in h100["offerings"])
    assert fleet.KWOK_GPU_NAME_LABEL == "karpenter.kwok.sh/instance-gpu-name"
    assert not any(fleet.GPU_PRODUCT_LABEL in _labels(o) for t in types.values() for o in t["offerings"])
    cpu = types["cpu-16x"]
    assert "nvidia.com/gpu" not in cpu["resources"]
    assert all({"key": fleet.KWOK_GPU_NAME_LABEL, "operator": "DoesNotExist"} in o["Requirements"]
               for o in cpu["offerings"])


def test_local_gpu_name_of_a_product_and_the_error_for_one_not_offered():
    assert fleet.local_gpu_name(fleet.load(), product="NVIDIA-H100-80GB-HBM3") == "h100"
    with pytest.raises(ValueError, match="no instance type of the local cloud has GPU 'NVIDIA-B200'"):
        fleet.local_gpu_name(fleet.load(), product="NVIDIA-B200")
