"""The SovereignStack CRD in a real apiserver: samples accepted, invalid stacks rejected naming
the field (and rejected offline too), apiserver and ``sovereign validate`` agree value by value,
printer columns and ``kubectl explain`` work. The harness installed crds/*.yaml at start, so a
CEL rule that does not compile or costs too much already failed the session there.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from sovereign.api import (
    GROUP,
    PLURAL,
    VERSION,
    Condition,
    ConditionStatus,
    ConditionType,
    ModelStatus,
    ResidencyViolation,
    SovereignStackStatus,
    load_documents,
    parse_stack,
    validate_document,
)
from sovereign_dev.cluster import wait_until

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))


def _load_invalid_stacks() -> Any:
    """The table of invalid stacks the offline unit test uses too (tests/unit/api)."""
    spec = importlib.util.spec_from_file_location("invalid_stacks", REPO / "tests/unit/api/invalid_stacks.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("invalid_stacks", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


invalid_stacks = _load_invalid_stacks()


def _create(api_client: client.ApiClient, namespace: str, document: dict[str, Any], *, dry_run: bool = False) -> Any:
    # Strict field validation, as kubectl does by default: unknown fields are errors, not pruned.
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, document, field_validation="Strict", dry_run="All" if dry_run else None
    )


def _apiserver_error(api_client: client.ApiClient, namespace: str, document: dict[str, Any]) -> str | None:
    """The apiserver's message when it refuses ``document``; None when it accepts it."""
    try:
        _create(api_client, namespace, document, dry_run=True)
    except ApiException as error:
        assert error.status in (400, 422), error.body
        return json.loads(error.body)["message"]
    return None


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.stem)
def test_sample_is_accepted_and_defaulted_like_the_models(api_client, namespace, path: Path) -> None:
    (document,) = load_documents(path.read_text())
    assert validate_document(document) == []

    stored = _create(api_client, namespace, document)

    # The apiserver's defaults are the models' defaults: the stored stack parses to the same spec.
    assert parse_stack(stored).spec == parse_stack(document).spec
    assert stored["spec"]["models"][0]["engine"] == document["spec"]["models"][0].get("engine", "vllm")
    assert stored["spec"]["residency"]["exposure"] == document["spec"]["residency"].get(
        "exposure", {"allowLoadBalancer": False, "allowNodePort": False}
    )


@pytest.mark.parametrize("case", invalid_stacks.CASES, ids=lambda case: case.id)
def test_invalid_stack_is_rejected_by_apiserver_and_offline(api_client, namespace, case: Any) -> None:
    document = case.document()

    offline = "\n".join(str(error) for error in validate_document(document))
    try:
        _create(api_client, namespace, document)
    except ApiException as error:
        assert error.status in (400, 422), error.body
        online = json.loads(error.body)["message"]
    else:
        pytest.fail(f"the apiserver accepted {case.id}")

    for name in case.names:
        assert name in online, f"apiserver: {online}"
        assert name in offline, f"sovereign validate: {offline}"


# Values at the edges of each field's rule. For each, the apiserver and the offline validator
# must agree on accept or reject: the CEL/OpenAPI side and the Python side are twins.
_PARITY = {
    "residency.jurisdiction": ["QA", "qa", "QAT", "Q1", ""],
    "residency.regions": [["me-central-1", "eu-west-1"], ["me-central-1", "-bad"], ["me-central-1", "a" * 64],
                          ["me-central-1", "eu_west.1"]],
    "applications.1.name": ["indexer-2", "a", "-a", "a-", "1abc", "Abc", "a" * 63, "a" * 64, "a.b", "a_b", "ü"],
    "dataStores.1.volume.size": ["1", "1Gi", "1.5Ti", "0", "0Gi", "-1Gi", "+1Gi", "1e3", "1E3", "1e", "1.", ".5",
                                 "1GB", "1gi", "1 Gi", "", "1Ki", "100m", "0.1", "5n", "3u", "1E", "1e-3", "Gi",
                                 "0.000000001n"],
    "residency.egress.allowCIDRs": [["10.0.0.0/8"], ["10.0.0.1/8"], ["10.0.0.0"], ["10.0.0.0/33"], ["fd00::/8"],
                                    ["::/0"], ["256.0.0.0/8"], ["010.0.0.0/8"], [" 10.0.0.0/8"]],
    "models.0.gpusPerReplica": [0, 1, 2, 3, 4, 5, 8, 16],
    "models.0.source.path": ["", "a/b/", "a", "/abs", "a//b", "../x", "a/../b", ".hidden", "a b", "a/b.c/d_e-f"],
    "dataStores.0.s3.bucket": ["ab", "abc", "a" * 63, "a" * 64, "my.bucket", "-abc", "ABC"],
    "dataStores.0.s3.endpoint": ["https://s3.gov.qa", "http://10.0.0.1:9000", "ftp://x", "https://", "https://a b",
                                 "https://s3.gov.qa/base/path"],
    "nodePools.0.karpenter.consolidateAfter": ["10m", "1h30m", "Never", "never", "10", "1.5h", "", "30s"],
    "models.0.extraArgs": [["--model=x"], ["--model-impl=vllm"], ["--port"], ["--portal"], ["--host", "0.0.0.0"],
                           ["-tp", "2"], ["-t=2"], ["--tensor_parallel_size=2"], ["--tensor-para", "2"],
                           ["-pp", "2"], ["--data-parallel-size-local=2"], ["-n2"], ["-r", "1"], ["--config=x"],
                           ["-dcp", "2"], ["-ep"], ["-q", "fp8"], ["-1"], ["--"], ["--max-model-len=4096"]],
    "applications.0.env.0.name": ["A", "1A", "A-B", "a.b", "", "_x"],
    "nodePools.1.existing.nodeSelector": [{"a/b": "c"}, {"example.com/x": "y"}, {"-a": "b"}, {"a/": "b"},
                                          {"x": ""}, {"x": "a b"}],
    "applications.0.image": ["a b", "registry.example/app@sha256:abc"],
    "applications.0.replicas": ["2", 2, -1, 129],
    "nodePools.0.limits.gpus": [8, 7, 4096, 4097],
}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value"),
    [(path, value) for path, values in _PARITY.items() for value in values],
    ids=lambda item: json.dumps(item) if not isinstance(item, str) or len(item) < 30 else f"{item[:10]}...",
)
def test_apiserver_and_validate_agree(api_client, namespace, path: str, value: Any) -> None:
    document = copy.deepcopy(invalid_stacks.full_sample())
    document["metadata"] = {"name": "parity"}
    invalid_stacks.set_value(path, value)(document["spec"])

    offline = validate_document(document)
    online = _apiserver_error(api_client, namespace, document)

    assert (online is None) == (offline == []), f"apiserver: {online!r}; sovereign validate: {offline}"


def _table(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    """What ``kubectl get`` receives: the list rendered as a Table by the apiserver."""
    method, url, headers, body, _ = api_client.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, header_params=headers, body=body)
    response.read()
    assert response.status == 200, response.data
    return json.loads(response.data)


def test_printer_columns_show_readiness_jurisdiction_models_and_violations(api_client, namespace) -> None:
    (document,) = load_documents((REPO / "manifests/samples/full.yaml").read_text())
    stored = _create(api_client, namespace, document)
    now = datetime.now(timezone.utc)
    status = SovereignStackStatus(
        observed_generation=stored["metadata"]["generation"],
        conditions=[
            Condition(type=ConditionType.READY, status=ConditionStatus.FALSE, observed_generation=1,
                      last_transition_time=now, reason="ModelsNotReady", message="chat has 1 of 2 replicas ready"),
            Condition(type=ConditionType.RESIDENCY_COMPLIANT, status=ConditionStatus.FALSE, observed_generation=1,
                      last_transition_time=now, reason="PodOutsideRegions", message="1 pod outside me-central-1"),
        ],
        models_ready="1/2",
        violation_count=1,
        models=[ModelStatus(name="chat", model="Qwen/Qwen2.5-72B-Instruct", replicas=2, ready_replicas=1,
                            endpoint=f"http://chat.{namespace}.svc:8000/v1")],
        violations=[ResidencyViolation(kind="Pod", namespace=namespace, name="stray", rule="PodOutsideRegions",
                                       message="runs in eu-west-1", since=now)],
    )  # fmt: skip
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "citizen-services",
        {"status": status.model_dump(mode="json", exclude_none=True)},
    )  # fmt: skip

    table = _table(api_client, namespace)

    columns = [column["name"] for column in table["columnDefinitions"]]
    assert columns[:6] == ["Name", "Ready", "Jurisdiction", "Models", "Violations", "Age"]
    (row,) = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert (cells["Name"], cells["Ready"], cells["Jurisdiction"]) == ("citizen-services", "False", "QA")
    assert (cells["Models"], cells["Violations"], cells["Enforcement"]) == ("1/2", 1, "Enforce")
    assert cells["Reason"] == "ModelsNotReady"
    assert cells["Age"]
    # The status the operator writes is the status the apiserver keeps.
    stored = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "citizen-services"
    )
    assert SovereignStackStatus.model_validate(stored["status"]) == status.model_copy(
        update={"conditions": [c.model_copy(update={"last_transition_time": now.replace(microsecond=0)})
                               for c in status.conditions],
                "violations": [status.violations[0].model_copy(update={"since": now.replace(microsecond=0)})]}
    )  # fmt: skip


def test_kubectl_get_and_explain(cluster, namespace) -> None:
    (document,) = load_documents((REPO / "manifests/samples/minimal.yaml").read_text())
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "manifests/samples/minimal.yaml"), check=True)

    listing = cluster.kubectl("get", "sstack", "-n", namespace, check=True).stdout
    assert listing.split("\n")[0].split() == ["NAME", "READY", "JURISDICTION", "MODELS", "VIOLATIONS", "AGE"]
    row = listing.split("\n")[1].split()
    assert row[0] == document["metadata"]["name"] and "QA" in row
    assert "minimal" in cluster.kubectl("get", "sovereign", "-n", namespace, check=True).stdout

    # The OpenAPI document is published a moment after the CRD is established.
    explained = wait_until(
        lambda: (result := cluster.kubectl("explain", "sstack.spec.models")).returncode == 0 and result.stdout,
        timeout=60,
        message="kubectl explain sstack.spec.models",
    )
    assert "gpusPerReplica" in explained
    assert "vLLM --tensor-parallel-size" in explained
    judge = " ".join(cluster.kubectl("explain", "sstack.spec.models.evaluation.scorers.judge", check=True).stdout.split())
    assert "never the model under evaluation" in judge and "spec.models" in judge
    weight = " ".join(cluster.kubectl("explain", "sstack.spec.models.evaluation.canary.weight", check=True).stdout.split())
    assert "a share of endpoints, not a weighted router" in weight
