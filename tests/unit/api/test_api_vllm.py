"""The vLLM command-line rules: which ``extraArgs`` entries would set a flag the operator owns,
as vLLM 0.33.0's parser reads them, and the refusal a user gets."""

from __future__ import annotations

import pytest

import invalid_stacks  # the table shared with the apiserver test, next to this file
from sovereign.api import InvalidStackError, parse_stack, vllm


@pytest.mark.parametrize("arg, owned", [
    ("--tensor-parallel-size=2", "--tensor-parallel-size"),
    ("--tensor-parallel-size", "--tensor-parallel-size"),
    ("-tp", "-tp"),
    ("-tp=2", "-tp"),
    ("-t", "-tp"),  # argparse prefix match: the only short option starting with -t
    ("--tensor_parallel_size=2", "--tensor-parallel-size"),  # vLLM reads _ as -
    ("--tensor-para", "--tensor-parallel-size"),  # argparse abbreviation
    ("--pipeline-parallel-size", "--pipeline-parallel-size"),
    ("-pp", "-pp"),
    ("--data-parallel-size=2", "--data-parallel-size"),
    ("-dp", "-dp"),
    ("--data-parallel-size-local", "--data-parallel-size-local"),
    ("-dpl=2", "-dpl"),
    ("-pcp", "-pcp"),
    ("--nnodes=2", "--nnodes"),
    ("-n2", "-n"),  # a one-letter option with its value glued on
    ("-r1", "-r"),
    ("--device-ids=0,1", "--device-ids"),
    ("--served-model-name", "--served-model-name"),
    ("--served_model_name=x", "--served-model-name"),
    ("--model=x", "--model"),
    ("--port", "--port"),
    ("--uds=/tmp/s", "--uds"),
    ("--headless", "--headless"),
    ("--config=/etc/vllm.yaml", "--config"),
    ("--download-dir=/tmp", "--download-dir"),
])
def test_every_spelling_of_an_owned_flag_is_caught(arg, owned):
    assert vllm.owned_flag(arg) == owned


@pytest.mark.parametrize("arg", [
    "--max-model-len=32768", "--model-impl=vllm", "--portal", "--enable-expert-parallel", "-ep",
    "-dcp", "--decode-context-parallel-size=2", "-q", "fp8", "--gpu-memory-utilization", "0.9",
    "-1", "--", "-", "--enforce-eager", "-O3", "--compilation-config={\"level\": 3}",
    # Prefixes of two owned flags: ambiguous, so vLLM itself refuses them.
    "-d", "-p", "--data-parallel-s", "--p",
])
def test_flags_the_operator_leaves_to_the_user_pass(arg):
    assert vllm.owned_flag(arg) is None


def test_the_refusal_names_the_field_the_aliases_and_the_fix():
    document = invalid_stacks.full_sample()
    document["spec"]["models"][0]["extraArgs"] = ["--max-model-len=4096", "-pp", "2"]

    with pytest.raises(InvalidStackError) as refused:
        parse_stack(document)

    text = str(refused.value)
    assert "spec.models[0].extraArgs" in text
    assert "--pipeline-parallel-size (-pp)" in text and "--tensor-parallel-size (-tp)" in text
    assert "set that instead" in text and "gpusPerReplica" in text


def test_the_rendered_flags_are_vllm_flags_the_user_may_not_override():
    assert all(vllm.owned_flag(flag) == flag for flag in vllm.RENDERED_FLAGS)
    assert vllm.DEFAULT_VLLM_IMAGE == "docker.io/vllm/vllm-openai:v0.33.0"



def test_the_crd_rules_cover_every_owned_flag_once():
    covered = [flag for rule in vllm.OWNED_FLAG_RULES for flag in rule.flags]
    long_and_short = [s for flag, aliases in vllm.OWNED_FLAGS.items() for s in (flag, *aliases)]

    assert sorted(covered) == sorted(long_and_short)
