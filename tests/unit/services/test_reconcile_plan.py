"""The reconcile plan: what one pass would write, decided from desired and observed objects alone.

An unchanged stack plans nothing; a changed object is re-applied; a removed entry is pruned;
retained data is never pruned.
"""

from __future__ import annotations

import copy
from pathlib import Path

from sovereign.api import load_documents, parse_stack
from sovereign.render.facts import ClusterFacts, NodeFacts
from sovereign.render.names import object_key
from sovereign.services.reconcile import desired_objects, plan_changes

SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "full.yaml"
ON_PREM = {"topology.kubernetes.io/region": "me-central-1", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
           "sovereign.ai/rack": "doha-1"}


def _document() -> dict:
    (document,) = load_documents(SAMPLE.read_text())
    document["metadata"] |= {"namespace": "gov-qa", "uid": "uid-1", "generation": 1}
    return document


def _facts(owner: str | None = None) -> ClusterFacts:
    labels = dict(ON_PREM)
    if owner:
        labels |= {"sovereign.ai/pool": "onprem", "sovereign.ai/stack": "citizen-services"}
    return ClusterFacts(nodes=(NodeFacts("gpu-mec1-2", labels, owner=owner, ready=True),))


def _live(objects: list[dict]) -> dict:
    """Objects as the apiserver returns them: server-set fields added, content kept."""
    live = {}
    for obj in objects:
        stored = copy.deepcopy(obj)
        stored["metadata"] |= {"uid": f"uid-of-{obj['metadata']['name']}", "resourceVersion": "7",
                               "managedFields": [{"manager": "sovereign-operator"}]}
        stored["status"] = {"observedGeneration": 1}
        live[object_key(obj)] = stored
    return live


def test_an_unchanged_stack_plans_no_writes() -> None:
    facts = _facts(owner="gov-qa/citizen-services")
    desired = desired_objects(parse_stack(_document()), facts)
    node = next(o for o in desired if o["kind"] == "Node")
    node_live = {"apiVersion": "v1", "kind": "Node",
                 "metadata": {"name": "gpu-mec1-2", "labels": {**ON_PREM, **node["metadata"]["labels"]},
                              "annotations": {"sovereign.ai/owner": "gov-qa/citizen-services", "other": "x"}}}

    plan = plan_changes(desired=desired, observed={**_live(desired), object_key(node): node_live})

    assert plan.apply == () and plan.prune == ()


def test_a_new_stack_applies_everything() -> None:
    desired = desired_objects(parse_stack(_document()), _facts())

    plan = plan_changes(desired=desired, observed={})

    assert [object_key(o) for o in plan.apply] == [object_key(o) for o in desired]
    assert plan.prune == ()


def test_swapping_a_model_applies_its_deployment_only() -> None:
    document = _document()
    before = desired_objects(parse_stack(document), _facts())
    document["spec"]["models"][0]["model"] = "meta-llama/Llama-3.3-70B-Instruct"
    after = desired_objects(parse_stack(document), _facts())

    plan = plan_changes(desired=after, observed=_live(before))

    assert [(o["kind"], o["metadata"]["name"]) for o in plan.apply] == [("Deployment", "chat")]
    assert plan.prune == ()


def test_removing_a_model_prunes_its_objects() -> None:
    document = _document()
    before = desired_objects(parse_stack(document), _facts())
    document["spec"]["models"] = [m for m in document["spec"]["models"] if m["name"] != "chat"]
    document["spec"]["applications"][0]["models"] = ["embed"]
    after = desired_objects(parse_stack(document), _facts())

    plan = plan_changes(desired=after, observed=_live(before))

    assert sorted((o["kind"], o["metadata"]["name"]) for o in plan.prune) == [
        ("Deployment", "chat"), ("PodDisruptionBudget", "chat"), ("PodMonitor", "chat"), ("ScaledObject", "chat"),
        ("Service", "chat")]
    assert [(o["kind"], o["metadata"]["name"]) for o in plan.apply] == [("Deployment", "assistant")]


def test_retained_volume_is_never_pruned_but_a_deleted_one_is() -> None:
    document = _document()
    document["spec"]["dataStores"][1]["deletionPolicy"] = "Retain"
    retained = desired_objects(parse_stack(document), _facts())
    document["spec"]["dataStores"][1]["deletionPolicy"] = "Delete"
    deleted = desired_objects(parse_stack(document), _facts())
    without = _document()
    without["spec"]["dataStores"].pop(1)
    without["spec"]["applications"][0]["dataStores"] = ["corpus"]
    desired = desired_objects(parse_stack(without), _facts())

    assert not [o for o in plan_changes(desired=desired, observed=_live(retained)).prune if o["kind"] == "PersistentVolumeClaim"]
    assert [o["metadata"]["name"] for o in plan_changes(desired=desired, observed=_live(deleted)).prune
            if o["kind"] == "PersistentVolumeClaim"] == ["scratch"]


def test_a_node_no_longer_matching_is_released() -> None:
    desired = desired_objects(parse_stack(_document()), ClusterFacts())
    claimed = {"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "gpu-mec1-2", "labels": {"sovereign.ai/pool": "onprem"},
                            "annotations": {"sovereign.ai/owner": "gov-qa/citizen-services"}}}

    plan = plan_changes(desired=desired, observed={object_key(claimed): claimed})

    assert [o["metadata"]["name"] for o in plan.prune] == ["gpu-mec1-2"]
