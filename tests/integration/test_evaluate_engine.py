"""``sovereign evaluate`` against a real MinIO and the real llama-server engine.

The dataset's expected answers are what tiny-llama-a answers greedily, so a is the candidate
that passes and tiny-llama-b, another model, the one that fails; the judge is a real model too.
Nothing is faked: the CLI reads the JSONL from the bucket and asks the engines over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sovereign.api import Evaluation
from sovereign.cli import main as cli
from sovereign.policy.evaluation import Example, judge_messages, judge_verdict
from sovereign.services.evaluate import DEFAULT_MAX_TOKENS, ask
from sovereign_dev import build, tinymodel
from sovereign_dev.engine import LlamaServer
from sovereign_dev.minio import MinioServer

pytestmark = pytest.mark.engine

PROMPTS = ["Which region serves this model?", "Name the capital of Qatar.", "Say hello.", "Count to three."]
KEY = "evals/chat.jsonl"


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LlamaServer]]:
    binary = build.ensure("llama-server") / "llama-server"
    root = tmp_path_factory.mktemp("evaluate")
    started: dict[str, LlamaServer] = {}
    try:
        for name in tinymodel.MODELS:
            started[name] = LlamaServer(model=tinymodel.ensure(name), alias=name, root=root, binary=binary)
            started[name].start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _url(server: LlamaServer) -> str:
    return f"{server.endpoint}/v1"


def _answer(server: LlamaServer, prompt: str) -> str:
    return ask(base_url=_url(server), model=server.alias, max_tokens=DEFAULT_MAX_TOKENS, timeout=60,
               messages=[{"role": "user", "content": prompt}])


@pytest.fixture
def dataset(minio_servers: dict[str, MinioServer], minio_bucket_name: str,
            engines: dict[str, LlamaServer]) -> dict[str, str]:
    """The bucket holds a's greedy answers as the expected ones; the ETag of the object."""
    me = minio_servers["me-central-1"]
    client = me.client()
    client.create_bucket(Bucket=minio_bucket_name)
    lines = [json.dumps({"prompt": p, "expected": _answer(engines["tiny-llama-a"], p)}) for p in PROMPTS]
    put = client.put_object(Bucket=minio_bucket_name, Key=KEY, Body=("\n".join(lines) + "\n").encode())
    return {"bucket": minio_bucket_name, "etag": put["ETag"].strip('"')}


def _run(me: MinioServer, dataset: dict[str, str], *, model: str, endpoint: str, spec: dict,
         tmp_path: Path, judges: str = "", reach_within: float = 60) -> tuple[int, str, str, dict]:
    report = tmp_path / "termination-log"
    env = {"AWS_ACCESS_KEY_ID": me.access_key, "AWS_SECRET_ACCESS_KEY": me.secret_key,
           "SOVEREIGN_S3_ENDPOINT": me.endpoint, "SOVEREIGN_S3_REGION": me.region, "SOVEREIGN_S3_PATH_STYLE": "true",
           "SOVEREIGN_EVAL_BUCKET": dataset["bucket"], "SOVEREIGN_EVAL_SPEC": json.dumps(spec),
           "SOVEREIGN_EVAL_MODEL": model, "SOVEREIGN_EVAL_ENDPOINT": endpoint,
           "SOVEREIGN_EVAL_REPORT": str(report), "SOVEREIGN_EVAL_JUDGES": judges,
           "SOVEREIGN_EVAL_REACH_WITHIN": str(reach_within)}
    result = CliRunner().invoke(cli, ["evaluate"], env=env)
    written = json.loads(report.read_text()) if report.exists() else {}
    return result.exit_code, result.stdout, result.stderr, written


def _spec(*scorers: dict, threshold: float = 0.75) -> dict:
    return {"dataset": {"dataStore": "corpus", "path": KEY}, "scorers": list(scorers), "threshold": threshold}


def test_the_model_whose_answers_the_dataset_holds_passes(minio_servers, dataset, engines, tmp_path):
    a = engines["tiny-llama-a"]

    code, stdout, stderr, report = _run(minio_servers["me-central-1"], dataset, model="tiny-llama-a",
                                        endpoint=_url(a), spec=_spec({"exactMatch": {}}), tmp_path=tmp_path)

    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[0]) == report
    assert report["passed"] is True and report["score"] == 1.0 and report["examples"] == len(PROMPTS)
    assert report["dataset"] == f"s3://{dataset['bucket']}/{KEY}"
    assert report["version"] == dataset["etag"]
    assert report["worstExamples"] == []
    assert f"tiny-llama-a passed: score 1.000 on {len(PROMPTS)} examples" in stderr


def test_another_model_fails_and_the_report_shows_its_worst_answers(minio_servers, dataset, engines, tmp_path):
    b = engines["tiny-llama-b"]

    code, _, stderr, report = _run(minio_servers["me-central-1"], dataset, model="tiny-llama-b",
                                   endpoint=_url(b), spec=_spec({"exactMatch": {}}), tmp_path=tmp_path)

    assert code == 1, stderr
    assert report["passed"] is False and report["score"] < 0.75 and report["threshold"] == 0.75
    worst = report["worstExamples"][0]
    assert worst["prompt"] in PROMPTS and worst["score"] == 0.0
    assert worst["answer"][:199] == _answer(b, worst["prompt"])[:199]
    assert "tiny-llama-b did not pass" in stderr


def test_a_judge_model_of_the_stack_grades_each_answer(minio_servers, dataset, engines, tmp_path):
    a, b = engines["tiny-llama-a"], engines["tiny-llama-b"]
    spec = _spec({"exactMatch": {}}, {"judge": {"model": "tiny-llama-b"}}, threshold=0)
    instructions = Evaluation.model_validate(spec).scorers[1].judge.instructions
    verdicts = []
    for line, prompt in enumerate(PROMPTS, start=1):
        example = Example(line=line, prompt=prompt, expected=_answer(a, prompt))
        reply = ask(base_url=_url(b), model="tiny-llama-b", max_tokens=8, timeout=60,
                    messages=judge_messages(instructions=instructions, example=example, answer=example.expected))
        verdicts.append(judge_verdict(reply))

    code, _, stderr, report = _run(minio_servers["me-central-1"], dataset, model="tiny-llama-a", endpoint=_url(a),
                                   spec=spec, tmp_path=tmp_path, judges=f"tiny-llama-b={_url(b)}")

    assert code == 0, stderr
    assert report["score"] == round(sum((1 + v) / 2 for v in verdicts) / len(PROMPTS), 4)


def test_an_unreachable_candidate_is_an_environment_error(minio_servers, dataset, tmp_path):
    code, _, stderr, report = _run(minio_servers["me-central-1"], dataset, model="tiny-llama-a",
                                   endpoint="http://127.0.0.1:9/v1", spec=_spec({"contains": {}}), tmp_path=tmp_path,
                                   reach_within=2)

    assert code == 3
    assert "cannot reach http://127.0.0.1:9/v1" in stderr and "within 2s" in stderr
    assert "cannot reach" in report["error"]


def test_a_missing_dataset_names_the_object(minio_servers, dataset, engines, tmp_path):
    spec = _spec({"contains": {}}) | {"dataset": {"dataStore": "corpus", "path": "evals/gone.jsonl"}}

    code, _, stderr, _ = _run(minio_servers["me-central-1"], dataset, model="tiny-llama-a",
                              endpoint=_url(engines["tiny-llama-a"]), spec=spec, tmp_path=tmp_path)

    assert code == 1
    assert "evals/gone.jsonl" in stderr


def test_a_judge_scorer_without_its_endpoint_is_refused(minio_servers, dataset, engines, tmp_path):
    code, _, stderr, _ = _run(minio_servers["me-central-1"], dataset, model="tiny-llama-a",
                              endpoint=_url(engines["tiny-llama-a"]), tmp_path=tmp_path,
                              spec=_spec({"judge": {"model": "grader"}}))

    assert code == 1
    assert "no endpoint for the judge model(s) grader: pass --judge NAME=URL" in stderr
