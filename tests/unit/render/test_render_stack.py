"""The whole desired set: deterministic, complete, labelled, and every pod inside the jurisdiction."""

from __future__ import annotations

from dataclasses import replace

import pytest
from render_inputs import sample_document, stack_from  # next to this file

from sovereign.api import InvalidStackError, SovereignStack
from sovereign.cli.render import dump_manifests
from sovereign.render.facts import Hold
from sovereign.render.names import SPEC_HASH_ANNOTATION, STACK_LABEL, spec_hash
from sovereign.render.stack import RenderError, render_stack


def test_rendering_twice_gives_byte_identical_manifests(full_document, facts) -> None:
    first = dump_manifests(render_stack(stack_from(full_document), facts))
    second = dump_manifests(render_stack(stack_from(full_document), facts))

    assert first == second


def test_full_sample_has_every_kind_of_child_in_a_stable_order(full_stack, facts) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in render_stack(full_stack, facts)]

    assert keys == [
        ("NetworkPolicy", "citizen-services-egress"),
        ("PersistentVolumeClaim", "scratch"),
        ("NodePool", "gov-qa-citizen-services-h100"),
        ("Node", "gpu-mec1-2"),
        ("Node", "gpu-mec1-3"),
        ("Deployment", "chat"), ("Service", "chat"), ("PodDisruptionBudget", "chat"), ("ScaledObject", "chat"),
        ("PodMonitor", "chat"),
        ("Deployment", "embed"), ("Service", "embed"), ("PodMonitor", "embed"),
        ("Deployment", "assistant"), ("Service", "assistant"),
        ("Deployment", "indexer"),
    ]


def test_every_pod_template_requires_the_allowed_regions(full_stack, facts) -> None:
    for obj in render_stack(full_stack, facts):
        if obj["kind"] != "Deployment":
            continue
        terms = obj["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms, obj["metadata"]["name"]
        for term in terms:
            assert {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["me-central-1"]} in term[
                "matchExpressions"], obj["metadata"]["name"]


def test_every_owned_object_is_labelled_hashed_and_owned(full_stack, facts) -> None:
    for obj in render_stack(full_stack, facts):
        meta = obj["metadata"]
        if obj["kind"] == "Node":
            continue  # a claim on a node, not an object of the stack
        assert meta["labels"][STACK_LABEL] == "citizen-services"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "sovereign-operator"
        assert meta["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(obj)
        retained = meta.get("annotations", {}).get("sovereign.ai/deletion-policy") == "Retain"
        if "namespace" in meta and not retained:
            assert meta["ownerReferences"][0]["uid"] == full_stack.metadata.uid


def test_retained_volume_has_no_owner_so_it_outlives_the_stack(facts) -> None:
    document = sample_document("full")
    document["spec"]["dataStores"][1]["deletionPolicy"] = "Retain"
    claim = next(o for o in render_stack(stack_from(document), facts) if o["kind"] == "PersistentVolumeClaim")

    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["annotations"]["sovereign.ai/deletion-policy"] == "Retain"


def test_changing_a_model_changes_only_that_models_hashes(full_document, facts) -> None:
    before = {(o["kind"], o["metadata"]["name"]): o for o in render_stack(stack_from(full_document), facts)}
    full_document["spec"]["models"][0]["model"] = "meta-llama/Llama-3.3-70B-Instruct"
    after = {(o["kind"], o["metadata"]["name"]): o for o in render_stack(stack_from(full_document), facts)}

    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("Deployment", "chat")}


def test_a_model_and_an_application_of_one_name_are_refused_by_the_api_and_by_render(facts) -> None:
    document = sample_document("full")
    document["spec"]["applications"][0]["name"] = "chat"

    with pytest.raises(InvalidStackError, match=r"spec.applications\[0\].name.*name of a model"):
        stack_from(document)
    # Render's own guard against two children of one name, for a model built without the API's
    # rules (model_validate skips them): it names both sources.
    unchecked = SovereignStack.model_validate(document)
    with pytest.raises(RenderError, match=r"spec.models\[0\] \(chat\).*both need Deployment gov-qa/chat"):
        render_stack(unchecked, facts)


def test_workloads_held_back_by_a_failed_store_get_zero_replicas_and_no_autoscaler(full_stack, facts) -> None:
    free = {(o["kind"], o["metadata"]["name"]): o for o in render_stack(full_stack, facts)}
    hold = Hold("DataStoreFailed", "data store corpus failed LocationOutsideRegions")
    held = replace(facts, held_back={"chat": hold, "assistant": hold})

    rendered = {(o["kind"], o["metadata"]["name"]): o for o in render_stack(full_stack, held)}

    assert rendered[("Deployment", "chat")]["spec"]["replicas"] == 0  # autoscaled: no replicas when free
    assert "replicas" not in free[("Deployment", "chat")]["spec"]
    assert rendered[("Deployment", "assistant")]["spec"]["replicas"] == 0
    assert set(free) - set(rendered) == {("ScaledObject", "chat")}  # KEDA would scale it up again
    changed = {key for key in rendered if rendered[key] != free[key]}
    assert changed == {("Deployment", "chat"), ("Deployment", "assistant")}


def test_offline_render_carries_the_hashes_the_operator_applies(full_document, facts) -> None:
    """Offline (`sovereign render`) the stack has no uid, so children get no ownerReference;
    their spec hashes must still equal those of the operator's render of the live stack."""
    live = {**full_document, "metadata": {**full_document["metadata"], "uid": "0d6f3c1e-uid"}}
    from_file = {**full_document, "metadata": {k: v for k, v in full_document["metadata"].items() if k != "uid"}}
    online = render_stack(stack_from(live), facts)
    offline = render_stack(stack_from(from_file), facts)

    assert any("ownerReferences" in o["metadata"] for o in online)
    assert not any("ownerReferences" in o["metadata"] for o in offline)
    def hashes(objects):
        return [(o["kind"], o["metadata"]["name"], o["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION))
                for o in objects]

    assert hashes(online) == hashes(offline)
    assert sum(h is not None for *_, h in hashes(online)) >= 10
