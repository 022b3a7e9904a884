"""Offline validation (``sovereign validate`` and ``parse_stack``): every broken rule is
reported with the field path, the bad value and what is allowed; nothing crashes."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import yaml

from sovereign.api import FieldError, InvalidStackError, load_documents, parse_stack, validate_document
from sovereign.api.types import NAME_PATTERN
from sovereign.cli import main

import invalid_stacks  # the table shared with the apiserver test, next to this file

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"




def _errors_text(document: dict[str, Any]) -> str:
    return "\n".join(str(error) for error in validate_document(document))


def test_table_has_at_least_twenty_cases() -> None:
    assert len(invalid_stacks.CASES) >= 20


@pytest.mark.parametrize("case", invalid_stacks.CASES, ids=lambda case: case.id)
def test_invalid_stack_is_rejected_naming_the_field(case: Any) -> None:
    text = _errors_text(case.document())

    assert text, f"{case.id} was accepted"
    for name in case.names:
        assert name in text


def test_error_names_path_value_and_what_is_allowed() -> None:
    document = invalid_stacks.full_sample()
    document["spec"]["models"][0]["gpusPerReplica"] = 3

    (error,) = validate_document(document)

    assert error == FieldError(
        path="spec.models[0].gpusPerReplica",
        value=3,
        message="must be 1, 2, 4 or 8 (the tensor-parallel sizes vLLM runs within one node), or 0 for llama-cpp",
    )
    assert str(error) == (
        "spec.models[0].gpusPerReplica: must be 1, 2, 4 or 8 (the tensor-parallel sizes vLLM runs within one node),"
        " or 0 for llama-cpp (got 3)"
    )


def test_unknown_field_lists_the_allowed_ones() -> None:
    document = invalid_stacks.full_sample()
    document["spec"]["residency"]["jurisdication"] = "QA"

    (error,) = validate_document(document)

    assert error.path == "spec.residency.jurisdication"
    assert "allowed here: jurisdiction, regions, enforcement, egress, exposure" in error.message


def test_every_undeclared_reference_is_reported_with_its_index() -> None:
    document = invalid_stacks.full_sample()
    for model in document["spec"]["models"]:
        model["nodePool"] = "gone"

    paths = [error.path for error in validate_document(document)]

    assert paths == ["spec.models[0].nodePool", "spec.models[1].nodePool"]


def test_parse_stack_raises_with_every_error_for_the_operator() -> None:
    document = invalid_stacks.full_sample()
    document["spec"]["models"][0]["replicas"] = -1
    document["spec"]["residency"]["jurisdiction"] = "Qatar"

    with pytest.raises(InvalidStackError) as raised:
        parse_stack(document)

    assert [error.path for error in raised.value.errors] == [
        "spec.residency.jurisdiction",
        "spec.models[0].replicas",
    ]
    assert "spec.models[0].replicas: must be at least 0 (got -1)" in str(raised.value)


@pytest.mark.parametrize(
    ("document", "path"),
    [(["not", "a", "mapping"], "<document>"), ({"apiVersion": "sovereign.ai/v1alpha1", "kind": "SovereignStack",
      "spec": {}}, "metadata.name")],
)  # fmt: skip
def test_documents_that_are_not_stacks_at_all(document: Any, path: str) -> None:
    assert [error.path for error in validate_document(document)] == [path]


def test_wrong_api_version_is_named() -> None:
    document = invalid_stacks.full_sample()
    document["apiVersion"] = "sovereign.ai/v1"

    (error,) = validate_document(document)

    assert (error.path, error.value) == ("apiVersion", "sovereign.ai/v1")
    assert "sovereign.ai/v1alpha1" in error.message


# --- generated inputs: always an error naming the field, never a crash ---------------------------

_NAME = re.compile(NAME_PATTERN)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_bad_model_names_are_reported_at_the_name(name: str) -> None:
    assume(not (_NAME.fullmatch(name) and len(name) <= 63))
    document = invalid_stacks.full_sample()
    document["spec"]["models"][1]["name"] = name

    errors = validate_document(document)

    assert errors
    assert errors[0].path == "spec.models[1].name"


_QUANTITY_TEXT = st.one_of(
    st.text(alphabet="0123456789.+-eEKMGTPimkn i", max_size=12),
    st.builds(lambda number, suffix: f"{number}{suffix}",
              st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
              st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "m", "k", "M", "G", "GB", "gi", "e3", "E"])),
)  # fmt: skip


@settings(max_examples=200)
@given(_QUANTITY_TEXT)
def test_volume_size_is_accepted_or_rejected_at_its_path(size: str) -> None:
    document = invalid_stacks.full_sample()
    document["spec"]["dataStores"][1]["volume"]["size"] = size

    errors = validate_document(document)

    assert all(error.path == "spec.dataStores[1].volume.size" for error in errors)
    if errors:
        assert "must be a positive Kubernetes quantity such as 200Gi" in errors[0].message


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["residency", "nodePools", "dataStores", "models", "applications"]), _JSON)
def test_garbage_anywhere_gives_field_errors_not_crashes(field: str, garbage: Any) -> None:
    document = copy.deepcopy(invalid_stacks.full_sample())
    document["spec"][field] = garbage

    errors = validate_document(document)

    assert all(isinstance(error, FieldError) and error.path.startswith("spec.") for error in errors)
    assert all(str(error) for error in errors)


# --- the command ---------------------------------------------------------------------------------


def test_validate_accepts_every_sample() -> None:
    paths = sorted(str(path) for path in SAMPLES.glob("*.yaml"))

    result = CliRunner().invoke(main, ["validate", *[arg for path in paths for arg in ("-f", path)]])

    assert result.exit_code == 0, result.output
    assert result.output.count(": valid") == len(paths)


def test_validate_multi_document_file(tmp_path: Path) -> None:
    good = (SAMPLES / "minimal.yaml").read_text()
    bad = good.replace("name: minimal", "name: broken").replace("perNode: 8", "perNode: 0")
    manifest = tmp_path / "stacks.yaml"
    manifest.write_text(f"{good}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: other}}\n---\n{bad}")

    result = CliRunner().invoke(main, ["validate", "-f", str(manifest)])

    assert result.exit_code == 1
    assert f"{manifest} (document 1, SovereignStack minimal): valid" in result.output
    assert "ConfigMap" not in result.output
    assert (
        f"{manifest} (document 3, SovereignStack broken): spec.nodePools[0].gpu.perNode: must be at least 1 (got 0)"
        in result.output
    )


def test_validate_reads_standard_input_and_quiet_prints_errors_only() -> None:
    result = CliRunner().invoke(main, ["validate", "-q", "-f", "-"], input=(SAMPLES / "audit.yaml").read_text())

    assert (result.exit_code, result.output) == (0, "")


def test_validate_rejects_text_that_is_not_yaml(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text("spec: [unclosed\n")

    result = CliRunner().invoke(main, ["validate", "-f", str(manifest)])

    assert result.exit_code == 1
    assert f"{manifest}: not valid YAML" in result.output


def test_date_like_strings_stay_strings(tmp_path: Path) -> None:
    """kubectl keeps 2025-01-01 a string; so must we, or an env value would be 'not a string'."""
    text = (SAMPLES / "full.yaml").read_text().replace("value: info", "value: 2025-01-01")
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(text)

    result = CliRunner().invoke(main, ["validate", "-f", str(manifest)])

    assert result.exit_code == 0, result.output


def test_validate_names_each_engine_mistake_with_its_field_and_fix(tmp_path: Path) -> None:
    """A llama-cpp model asking for GPUs and autoscaling, and an engine that does not exist."""
    cpu = load_documents((SAMPLES / "cpu.yaml").read_text())[0]
    cpu["spec"]["models"][0] |= {"gpusPerReplica": 1, "autoscaling": {"maxReplicas": 2}}
    unknown = copy.deepcopy(load_documents((SAMPLES / "cpu.yaml").read_text())[0])
    unknown["metadata"]["name"] = "unknown-engine"
    unknown["spec"]["models"][0]["engine"] = "tgi"
    manifest = tmp_path / "stacks.yaml"
    manifest.write_text(yaml.safe_dump_all([cpu, unknown]))

    result = CliRunner().invoke(main, ["validate", "-f", str(manifest)])

    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{manifest} (document 1, SovereignStack cpu-assistant): spec.models[0].gpusPerReplica: engine llama-cpp "
        "runs on CPU: remove gpusPerReplica (or set it to 0), or use engine vllm on a GPU pool (got 1)",
        f"{manifest} (document 1, SovereignStack cpu-assistant): spec.models[0].autoscaling: autoscaling is only "
        "for engine vllm (it scales on vLLM's request queue); remove it from a llama-cpp model "
        '(got {"maxReplicas": 2})',
        f"{manifest} (document 2, SovereignStack unknown-engine): spec.models[0].engine: must be 'vllm' or "
        "'llama-cpp' (got \"tgi\")",
    ]
