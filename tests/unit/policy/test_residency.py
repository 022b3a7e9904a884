"""Residency rules for pods, volumes, Services and stacks in a governed namespace."""

from __future__ import annotations


import pytest
from sovereign.api import Residency, parse_stack
from sovereign.policy import residency as r
from sovereign.policy.residency_store import Decision

QA = Residency(jurisdiction="QA", regions=["me-central-1"])
TOPOLOGY = r.Topology.from_nodes([
    {"metadata": {"name": name, "labels": {"topology.kubernetes.io/region": region,
                                           "topology.kubernetes.io/zone": zone}}}
    for name, region, zone in [
        ("gpu-mec1-0", "me-central-1", "me-central-1a"),
        ("gpu-mec1-1", "me-central-1", "me-central-1b"),
        ("gpu-euw1-0", "eu-west-1", "eu-west-1a"),
    ]
])
ALLOWED_TEXT = "the allowed regions of stack gov/citizen (QA) are me-central-1"


def scope(**residency) -> r.Scope:
    stacks = {"citizen": Residency(**{"jurisdiction": "QA", "regions": ["me-central-1"], **residency})}
    result = r.scope_for(namespace="gov", stacks=stacks, labels=None)
    assert result is not None
    return result


def pod(name: str = "p", **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "gov"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


def region_affinity(*values: str, operator: str = "In") -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/region", "operator": operator, "values": list(values)}]}
    ]}}}


# --- scope -------------------------------------------------------------------------------------


def test_a_namespace_without_stacks_is_not_governed():
    assert r.scope_for(namespace="free", stacks={}, labels={}) is None


def test_an_object_of_one_stack_answers_to_that_stack_and_others_to_the_strictest_of_all():
    stacks = {
        "a": Residency(jurisdiction="QA", regions=["me-central-1", "eu-west-1"], enforcement="Audit",
                       exposure={"allowLoadBalancer": True}),
        "b": Residency(jurisdiction="QA", regions=["me-central-1"], enforcement="Enforce"),
    }
    own = r.scope_for(namespace="gov", stacks=stacks, labels={"sovereign.ai/stack": "a"})
    shared = r.scope_for(namespace="gov", stacks=stacks, labels={"sovereign.ai/stack": "gone"})

    assert (own.stacks, own.regions, own.enforce, own.allow_load_balancer) == (
        ("a",), ("eu-west-1", "me-central-1"), False, True)
    assert (shared.stacks, shared.regions, shared.enforce, shared.allow_load_balancer) == (
        ("a", "b"), ("me-central-1",), True, False)
    assert shared.governor == "stacks gov/a, gov/b (QA)"


def test_stacks_without_a_common_region_leave_nothing_placeable():
    stacks = {"a": Residency(jurisdiction="QA", regions=["me-central-1"]),
              "b": Residency(jurisdiction="DE", regions=["eu-central-1"])}
    shared = r.scope_for(namespace="gov", stacks=stacks, labels=None)

    decision = r.check_pod(pod=pod(affinity=region_affinity("me-central-1")), scope=shared, topology=TOPOLOGY)

    assert decision.reason == r.NO_COMMON_REGION
    assert "Pod gov/p breaks NoCommonRegion" in decision.message


# --- pods --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, named", [
    ({"nodeSelector": {"topology.kubernetes.io/region": "eu-west-1"}},
     "nodeSelector topology.kubernetes.io/region=eu-west-1 places it in eu-west-1"),
    ({"nodeName": "gpu-euw1-0"}, "nodeName gpu-euw1-0 places it in eu-west-1"),
    ({"affinity": region_affinity("eu-west-1")},
     "node affinity topology.kubernetes.io/region=eu-west-1 places it in eu-west-1"),
    ({"nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"}},
     "nodeSelector topology.kubernetes.io/zone=eu-west-1a places it in eu-west-1"),
    ({"nodeSelector": {"kubernetes.io/hostname": "gpu-euw1-0"}},
     "nodeSelector kubernetes.io/hostname=gpu-euw1-0 places it in eu-west-1"),
])
def test_a_pod_pinned_outside_the_regions_is_named_with_the_rule_and_the_allowed_regions(spec, named):
    decision = r.check_pod(pod=pod("pinned", **spec), scope=scope(), topology=TOPOLOGY)

    assert decision == Decision(False, r.POD_OUTSIDE_REGIONS,
                                f"Pod gov/pinned breaks PodOutsideRegions: {named}; {ALLOWED_TEXT}")


def test_allowing_one_region_too_many_is_as_bad_as_pinning_outside():
    decision = r.check_pod(pod=pod(affinity=region_affinity("me-central-1", "eu-west-1")), scope=scope(),
                           topology=TOPOLOGY)

    assert decision.reason == r.POD_OUTSIDE_REGIONS
    assert "region in (me-central-1, eu-west-1) places it in eu-west-1" in decision.message


def test_the_injected_pin_does_not_hide_a_pin_outside():
    # What the validating webhook sees after the mutating one ran: both requirements in one term.
    affinity = region_affinity("eu-west-1")
    term = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    term["matchExpressions"].append(
        {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]})

    assert r.check_pod(pod=pod(affinity=affinity), scope=scope(), topology=TOPOLOGY).reason == r.POD_OUTSIDE_REGIONS


def test_an_unknown_node_or_zone_counts_as_outside():
    by_node = r.check_pod(pod=pod(nodeName="ghost"), scope=scope(), topology=TOPOLOGY)
    by_zone = r.check_pod(pod=pod(nodeSelector={"topology.kubernetes.io/zone": "xx-north-9a"}), scope=scope(),
                          topology=TOPOLOGY)

    assert by_node.reason == by_zone.reason == r.POD_OUTSIDE_REGIONS
    assert "nodeName ghost places it in an unknown region (node ghost)" in by_node.message
    assert "places it in an unknown region (zone xx-north-9a)" in by_zone.message


def test_a_zone_no_node_has_yet_belongs_to_the_region_its_name_starts_with():
    decision = r.check_pod(pod=pod(nodeSelector={"topology.kubernetes.io/zone": "me-central-1c"},
                                   affinity=region_affinity("me-central-1")), scope=scope(), topology=TOPOLOGY)

    assert decision.ok


@pytest.mark.parametrize("spec", [
    {},
    {"affinity": region_affinity("eu-west-1", operator="NotIn")},
    {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
])
def test_a_pod_free_to_run_anywhere_is_not_pinned(spec):
    decision = r.check_pod(pod=pod(**spec), scope=scope(), topology=TOPOLOGY)

    assert decision.reason == r.POD_NOT_PINNED
    assert decision.message.startswith("Pod gov/p breaks PodNotPinnedToRegions: it may be scheduled outside them")
    assert decision.message.endswith(ALLOWED_TEXT)


def test_a_pod_pinned_inside_is_compliant():
    decision = r.check_pod(pod=pod(affinity=region_affinity("me-central-1")), scope=scope(), topology=TOPOLOGY)

    assert decision == Decision(True, r.IN_REGIONS, "Pod can only run in me-central-1")


def test_where_a_scheduled_pod_runs_beats_what_it_asked_for():
    scheduled_outside = pod(affinity=region_affinity("me-central-1"), nodeName="gpu-euw1-0")
    scheduled_inside = pod(nodeName="gpu-mec1-1")

    outside = r.check_pod_placement(pod=scheduled_outside, scope=scope(), topology=TOPOLOGY)
    inside = r.check_pod_placement(pod=scheduled_inside, scope=scope(), topology=TOPOLOGY)

    assert outside == Decision(False, r.POD_OUTSIDE_REGIONS,
                               f"Pod gov/p breaks PodOutsideRegions: it runs on node gpu-euw1-0 in eu-west-1; "
                               f"{ALLOWED_TEXT}")
    assert inside == Decision(True, r.IN_REGIONS, "Pod runs on node gpu-mec1-1 in me-central-1")


def test_a_pending_pod_is_judged_by_its_constraints():
    decision = r.check_pod_placement(pod=pod(nodeSelector={"topology.kubernetes.io/region": "eu-west-1"}),
                                     scope=scope(), topology=TOPOLOGY)

    assert decision.reason == r.POD_OUTSIDE_REGIONS



def storage_class(name: str = "regional", *zones: str, mode: str | None = None) -> dict:
    sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
          "provisioner": "ebs.csi.aws.com"}
    if zones:
        sc["allowedTopologies"] = [{"matchLabelExpressions": [
            {"key": "topology.ebs.csi.aws.com/zone", "values": list(zones)}]}]
    if mode:
        sc["volumeBindingMode"] = mode
    return sc


def claim(name: str = "data", storage_class_name: str = "regional") -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "gov"},
            "spec": {"storageClassName": storage_class_name, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}


def test_a_claim_whose_class_allows_zones_outside_is_refused():
    decision = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, volume=None,
                             storage_class=storage_class("regional", "me-central-1a", "eu-west-1a"))

    assert decision == Decision(False, r.STORAGE_CLASS_OUTSIDE_REGIONS,
                                "PersistentVolumeClaim gov/data breaks StorageClassOutsideRegions: StorageClass "
                                f"regional allows volumes in eu-west-1 (allowedTopologies); {ALLOWED_TEXT}")


def test_a_class_without_topology_is_fine_only_when_it_waits_for_the_pinned_pod():
    immediate = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, volume=None,
                              storage_class=storage_class("regional"))
    waiting = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, volume=None,
                            storage_class=storage_class("regional", mode="WaitForFirstConsumer"))
    inside = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, volume=None,
                           storage_class=storage_class("regional", "me-central-1a", "me-central-1b"))

    assert immediate.reason == r.STORAGE_CLASS_NOT_PINNED
    assert "provisions volumes at once (Immediate) in any zone" in immediate.message
    assert waiting.ok and inside.ok


def test_a_claim_whose_class_does_not_exist_yet_is_admitted():
    decision = r.check_claim(claim=claim(storage_class_name="later"), scope=scope(), topology=TOPOLOGY,
                             volume=None, storage_class=None)

    assert decision.ok
    assert "StorageClass later does not exist" in decision.message


def volume(name: str, *terms: dict, labels: dict | None = None) -> dict:
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name, "labels": labels or {}},
          "spec": {"capacity": {"storage": "1Gi"}}}
    if terms:
        pv["spec"]["nodeAffinity"] = {"required": {"nodeSelectorTerms": list(terms)}}
    return pv


def zone_term(*zones: str) -> dict:
    return {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": list(zones)}]}


def test_a_bound_claim_is_judged_by_where_its_volume_is():
    outside = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, storage_class=storage_class(),
                            volume=volume("pv-eu", zone_term("eu-west-1a")))
    inside = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, storage_class=storage_class(),
                           volume=volume("pv-qa", zone_term("me-central-1b")))
    by_label = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, storage_class=None,
                             volume=volume("pv-l", labels={"topology.kubernetes.io/region": "eu-west-1"}))

    assert outside == Decision(False, r.VOLUME_OUTSIDE_REGIONS,
                               "PersistentVolumeClaim gov/data breaks VolumeOutsideRegions: PersistentVolume pv-eu "
                               f"is in eu-west-1; {ALLOWED_TEXT}")
    assert inside == Decision(True, r.IN_REGIONS, "PersistentVolume pv-qa is in me-central-1")
    assert by_label.reason == r.VOLUME_OUTSIDE_REGIONS


def test_a_volume_without_topology_cannot_be_vouched_for():
    decision = r.check_claim(claim=claim(), scope=scope(), topology=TOPOLOGY, storage_class=None,
                             volume=volume("nfs"))

    assert decision.reason == r.VOLUME_TOPOLOGY_UNKNOWN
    assert "PersistentVolume nfs has no node affinity or topology labels" in decision.message


# --- Services ----------------------------------------------------------------------------------


def service(**spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "gov"},
            "spec": {"ports": [{"port": 80}], **spec}}


@pytest.mark.parametrize("spec, rule, detail", [
    ({"type": "LoadBalancer"}, r.LOAD_BALANCER_NOT_ALLOWED,
     ("type LoadBalancer may publish it beyond the jurisdiction; set spec.residency.exposure.allowLoadBalancer "
     "to allow it")),
    ({"type": "NodePort"}, r.NODE_PORT_NOT_ALLOWED,
     "type NodePort opens a port on every node; set spec.residency.exposure.allowNodePort to allow it"),
    ({"externalIPs": ["203.0.113.7"]}, r.EXTERNAL_IPS_NOT_ALLOWED,
     "externalIPs 203.0.113.7 route outside traffic into the namespace, which no residency field declares"),
    ({"type": "ExternalName", "externalName": "api.example.com"}, r.EXTERNAL_NAME_NOT_ALLOWED,
     ("type ExternalName sends traffic to api.example.com, outside the declared egress: reach it through "
     "spec.residency.egress.allowCIDRs instead")),
])
def test_services_that_open_the_namespace_are_refused_with_the_rule(spec, rule, detail):
    decision = r.check_service(service=service(**spec), scope=scope())

    assert decision == Decision(False, rule, f"Service gov/web breaks {rule}: {detail}; {ALLOWED_TEXT}")


def test_declared_exposure_allows_load_balancers_and_node_ports_but_never_external_ips():
    allowing = scope(exposure={"allowLoadBalancer": True, "allowNodePort": True})

    assert r.check_service(service=service(type="LoadBalancer"), scope=allowing).ok
    assert r.check_service(service=service(type="NodePort"), scope=allowing).ok
    both = r.check_service(service=service(type="LoadBalancer", externalIPs=["203.0.113.7"]), scope=scope())
    assert both.reason == r.LOAD_BALANCER_NOT_ALLOWED
    assert "(ExternalIPsNotAllowed)" in both.message
    assert r.check_service(service=service(), scope=scope()).ok


# --- the stack ---------------------------------------------------------------------------------


def stack(**spec) -> tuple:
    body = {"apiVersion": "sovereign.ai/v1alpha1", "kind": "SovereignStack",
            "metadata": {"name": "citizen", "namespace": "gov"},
            "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"]}, **spec}}
    return parse_stack(body), body


def test_a_stack_whose_pool_or_volume_points_outside_its_regions_is_refused():
    parsed, body = stack(
        nodePools=[{"name": "eu", "provisioner": "Existing", "gpu": {"product": "H100", "perNode": 8},
                    "existing": {"nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"}}}],
        dataStores=[{"name": "scratch", "volume": {"size": "1Gi", "storageClassName": "spread"}}],
    )
    classes = {"spread": storage_class("spread", "me-central-1a", "eu-west-1b")}

    decision = r.check_stack(stack=parsed, body=body, storage_classes=classes, topology=TOPOLOGY)

    assert decision.reason == r.NODE_POOL_OUTSIDE_REGIONS
    assert decision.message == (
        "SovereignStack gov/citizen breaks NodePoolOutsideRegions: nodePools eu existing.nodeSelector "
        f"topology.kubernetes.io/zone=eu-west-1a selects nodes in eu-west-1; {ALLOWED_TEXT}; "
        "SovereignStack gov/citizen breaks StorageClassOutsideRegions: StorageClass spread allows volumes in "
        f"eu-west-1 (allowedTopologies); {ALLOWED_TEXT} (used by dataStores scratch)")


def test_a_stack_inside_its_regions_passes():
    parsed, body = stack(
        nodePools=[{"name": "qa", "provisioner": "Existing", "gpu": {"product": "H100", "perNode": 8},
                    "existing": {"nodeSelector": {"topology.kubernetes.io/zone": "me-central-1a"}}}],
        dataStores=[{"name": "scratch", "volume": {"size": "1Gi", "storageClassName": "not-yet"}}],
    )

    assert r.check_stack(stack=parsed, body=body, storage_classes={}, topology=TOPOLOGY).ok


# --- workloads of failed stores ----------------------------------------------------------------


def test_workloads_using_a_failed_store_are_blocked_with_the_failed_check():
    parsed, _ = stack(
        nodePools=[{"name": "h100", "provisioner": "Existing", "gpu": {"product": "H100", "perNode": 8}}],
        dataStores=[{"name": "corpus", "s3": {"bucket": "qa-corpus", "region": "me-central-1"}},
                    {"name": "scratch", "volume": {"size": "1Gi"}}],
        models=[{"name": "chat", "model": "m", "source": {"dataStore": "corpus"}, "nodePool": "h100"}],
        applications=[{"name": "assistant", "image": "a:1", "dataStores": ["scratch", "corpus"]},
                      {"name": "other", "image": "o:1", "dataStores": ["scratch"]}],
    )
    failed = {"corpus": Decision(False, "LocationOutsideRegions", "bucket 'qa-corpus' is in eu-west-1")}

    blocked = r.blocked_workloads(stack=parsed, failed_stores=failed)

    assert blocked == {
        "chat": Decision(False, r.STORE_FAILED, "model chat is not started: data store corpus failed "
                                                "LocationOutsideRegions: bucket 'qa-corpus' is in eu-west-1"),
        "assistant": Decision(False, r.STORE_FAILED, "application assistant is not started: data store corpus "
                                                     "failed LocationOutsideRegions: bucket 'qa-corpus' is in "
                                                     "eu-west-1"),
    }


@pytest.mark.parametrize("fields, allow, named", [
    ({"hostNetwork": True}, False, "hostNetwork"),
    ({"hostPID": True, "hostIPC": True}, False, "hostPID, hostIPC"),
    ({"hostNetwork": True}, True, None),
])
def test_host_namespaces_are_a_rule_of_their_own(fields, allow, named):
    governing = r.scope_for(namespace="gov-qa", labels=None, stacks={"citizen": Residency.model_validate(
        {"jurisdiction": "QA", "regions": ["me-central-1"], "egress": {"allowHostNamespaces": allow}})})
    running = pod(nodeName="gpu-mec1-0", **fields)

    decision = r.check_pod_placement(pod=running, scope=governing, topology=TOPOLOGY)

    if named is None:
        assert decision.ok
    else:
        assert decision.reason == r.HOST_NAMESPACES_NOT_ALLOWED
        assert f"breaks HostNamespacesNotAllowed: {named} puts it in the node's own namespaces" in decision.message
        assert "set spec.residency.egress.allowHostNamespaces to allow it" in decision.message
