"""The SovereignStack models as the operator and users see them: samples round-trip, defaults
are the documented ones, status serialises the way the apiserver stores it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import kopf
import pytest

from sovereign.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    DeletionPolicy,
    Enforcement,
    ModelStatus,
    SovereignStack,
    SovereignStackStatus,
    load_documents,
    parse_quantity,
    parse_stack,
)

SAMPLES = sorted((Path(__file__).resolve().parents[3] / "manifests" / "samples").glob("*.yaml"))


def test_the_samples_exist() -> None:
    assert {path.stem for path in SAMPLES} >= {"minimal", "full", "audit", "cpu"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.stem)
def test_sample_round_trips_to_an_equal_object(path: Path) -> None:
    (document,) = load_documents(path.read_text())
    stack = parse_stack(document)

    assert stack.model_dump(mode="json", exclude_unset=True) == document
    # With defaults filled in, the dump parses back into the same stack.
    assert parse_stack(stack.model_dump(mode="json")) == stack


def test_minimal_stack_gets_the_documented_defaults() -> None:
    (document,) = load_documents((SAMPLES[0].parent / "minimal.yaml").read_text())
    spec = parse_stack(document).spec

    assert spec.residency.enforcement is Enforcement.ENFORCE
    assert spec.residency.egress.allow_cidrs == []
    assert spec.residency.exposure.allow_load_balancer is False
    assert spec.data_stores[0].deletion_policy is DeletionPolicy.RETAIN
    model = spec.models[0]
    assert (model.engine, model.gpus, model.replicas, model.startup_timeout_seconds) == ("vllm", 1, 1, None)
    assert model.weights_throughput == "50Mi"
    assert model.cache.size == "200Gi"
    assert model.source.path == "qwen2.5-7b-instruct/"
    assert spec.applications == []


def test_fields_are_camel_case_on_the_wire_and_acronyms_capitalised() -> None:
    (document,) = load_documents((SAMPLES[0].parent / "full.yaml").read_text())
    dumped = parse_stack(document).model_dump(mode="json")

    assert dumped["spec"]["residency"]["egress"] == {"allowCIDRs": ["10.20.0.0/16", "172.31.8.0/24"],
                                                     "allowHostNamespaces": False}
    assert set(dumped["spec"]["models"][0]) >= {"gpusPerReplica", "nodePool", "startupTimeoutSeconds", "extraArgs"}
    assert "credentialsSecretRef" in dumped["spec"]["dataStores"][0]["s3"]


def test_status_serialises_like_kubernetes_and_parses_back() -> None:
    moment = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=3)))
    status = SovereignStackStatus(
        observed_generation=3,
        conditions=[
            Condition(
                type=ConditionType.READY,
                status=ConditionStatus.FALSE,
                observed_generation=3,
                last_transition_time=moment,
                reason="ModelsLoading",
                message="1 of 2 models ready",
            )
        ],
        models_ready="1/2",
        models=[ModelStatus(name="chat", model="Qwen/Qwen2.5-72B-Instruct", replicas=2, ready_replicas=1)],
    )

    dumped = status.model_dump(mode="json", exclude_none=True)

    assert dumped["conditions"] == [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 3,
            "lastTransitionTime": "2025-03-01T09:30:05Z",
            "reason": "ModelsLoading",
            "message": "1 of 2 models ready",
        }
    ]
    assert dumped["modelsReady"] == "1/2"
    assert dumped["models"][0]["readyReplicas"] == 1
    assert SovereignStackStatus.model_validate(dumped).conditions[0].last_transition_time == moment.replace(
        microsecond=0
    )


def test_status_written_by_a_newer_operator_still_parses() -> None:
    status = SovereignStackStatus.model_validate({"modelsReady": "0/1", "futureField": {"x": 1}})

    assert status.models_ready == "0/1"


def test_stack_read_from_the_apiserver_keeps_metadata() -> None:
    (document,) = load_documents((SAMPLES[0].parent / "minimal.yaml").read_text())
    document["metadata"] |= {"namespace": "gov-qa", "generation": 4, "uid": "abc", "resourceVersion": "77"}

    stack = parse_stack(document)

    assert (stack.metadata.namespace, stack.metadata.generation) == ("gov-qa", 4)
    assert stack.model_dump(mode="json", exclude_unset=True)["metadata"]["resourceVersion"] == "77"
    assert isinstance(stack, SovereignStack)


def test_a_kopf_body_parses_like_a_dict() -> None:
    """Handlers hand parse_stack the body Kopf gives them, a read-only Mapping, not a dict."""
    (document,) = load_documents((SAMPLES[0].parent / "full.yaml").read_text())

    assert parse_stack(kopf.Body(document)) == parse_stack(document)


@pytest.mark.parametrize(
    ("text", "value"),
    [("200Gi", Decimal(200 * 2**30)), ("1.5Ti", Decimal("1.5") * 2**40), ("500M", Decimal(500 * 10**6)),
     ("250m", Decimal("0.25")), ("1e3", Decimal(1000)), (".5", Decimal("0.5")), ("2", Decimal(2))],
)  # fmt: skip
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["200GB", "-1Gi", "+1Gi", "1 Gi", "", "Gi", "1.2.3", "1e"])
def test_parse_quantity_rejects_malformed_and_signed_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)
