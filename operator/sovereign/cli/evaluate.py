"""``sovereign evaluate``: score a model on an in-country dataset and say whether it passes.

Runs as the evaluation Job of a blue/green rollout, against the candidate's own Service, and by
hand against any OpenAI-compatible endpoint. Inputs come from flags or, as the rendered Job sets
them, from the environment; store credentials only from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``; neither: ambient credentials), never from flags.
The work is done by ``services.evaluate``; this module parses input, prints the report and maps
errors to exit codes. Auto-registered by ``sovereign.cli``.

The contract the rendered Job relies on: ``SOVEREIGN_S3_REGION``, ``SOVEREIGN_EVAL_BUCKET``,
``SOVEREIGN_EVAL_SPEC`` (the model's ``evaluation`` block as JSON), ``SOVEREIGN_EVAL_MODEL``,
``SOVEREIGN_EVAL_ENDPOINT`` (required); ``SOVEREIGN_S3_ENDPOINT``, ``SOVEREIGN_S3_PATH_STYLE``,
``SOVEREIGN_EVAL_JUDGES`` (``name=url,...``), ``SOVEREIGN_EVAL_REPORT`` (a file, such as the
container's termination log, that gets the report as JSON). Exit 0 passed, 1 did not pass or the
dataset or spec is not acceptable, 3 an environment problem (store or endpoint unreachable,
credentials rejected).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from sovereign.api import Evaluation, rule_errors
from sovereign.policy.evaluation import DatasetError
from sovereign.services.evaluate import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_REACH_WITHIN,
    EndpointUnreachable,
    EvaluationError,
    evaluate,
)
from sovereign.stores.credentials import Credentials
from sovereign.stores.errors import BucketNotFound, ObjectNotFound, StoreError
from sovereign.stores.s3 import S3Store

ENV_ENDPOINT = "SOVEREIGN_S3_ENDPOINT"
ENV_REGION = "SOVEREIGN_S3_REGION"
ENV_PATH_STYLE = "SOVEREIGN_S3_PATH_STYLE"
ENV_BUCKET = "SOVEREIGN_EVAL_BUCKET"
ENV_SPEC = "SOVEREIGN_EVAL_SPEC"
ENV_MODEL = "SOVEREIGN_EVAL_MODEL"
ENV_MODEL_ENDPOINT = "SOVEREIGN_EVAL_ENDPOINT"
ENV_JUDGES = "SOVEREIGN_EVAL_JUDGES"
ENV_REPORT = "SOVEREIGN_EVAL_REPORT"
ENV_REACH_WITHIN = "SOVEREIGN_EVAL_REACH_WITHIN"


@click.command("evaluate")
@click.option("--spec", "spec_text", envvar=ENV_SPEC, required=True,
              help="The model's evaluation block as JSON or YAML text (dataset, scorers, threshold, "
                   f"sampleSize), or @FILE to read it from a file. Env: {ENV_SPEC}.")
@click.option("--bucket", envvar=ENV_BUCKET, required=True,
              help=f"Bucket of evaluation.dataset.dataStore. Env: {ENV_BUCKET}.")
@click.option("--s3-endpoint", envvar=[ENV_ENDPOINT, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
              help=f"S3 endpoint URL; unset: AWS S3 of the region. Env: {ENV_ENDPOINT}.")
@click.option("--region", envvar=[ENV_REGION, "AWS_REGION", "AWS_DEFAULT_REGION"], required=True,
              help=f"Region of the bucket (signs requests). Env: {ENV_REGION}.")
@click.option("--path-style/--virtual-hosted-style", envvar=ENV_PATH_STYLE, default=False,
              help=f"Address the bucket as <endpoint>/<bucket> (MinIO). Env: {ENV_PATH_STYLE}=true.")
@click.option("--model", envvar=ENV_MODEL, required=True,
              help=f"Model name put in each request (the model id the server answers to). Env: {ENV_MODEL}.")
@click.option("--endpoint", envvar=ENV_MODEL_ENDPOINT, required=True,
              help="OpenAI-compatible base URL of the model under evaluation, such as "
                   f"http://chat-4f1c2a9e.gov-qa.svc:8000/v1. Env: {ENV_MODEL_ENDPOINT}.")
@click.option("--judge", "judges", envvar=ENV_JUDGES, multiple=True,
              help="NAME=URL of a judge model's base URL, once per judge scorer (env: comma-separated, "
                   f"{ENV_JUDGES}).")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Most tokens of each answer.")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=120, show_default=True,
              help="Seconds to wait for each answer.")
@click.option("--reach-within", type=click.FloatRange(0, 3600), envvar=ENV_REACH_WITHIN,
              default=DEFAULT_REACH_WITHIN, show_default=True,
              help="Seconds each endpoint may take to accept connections before it counts as unreachable "
                   f"(a candidate's Service may get its endpoints just after the Job starts). Env: {ENV_REACH_WITHIN}.")
@click.option("--report-file", envvar=ENV_REPORT, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report, as JSON, to this file (the Job's /dev/termination-log, where "
                   f"the operator reads it). Env: {ENV_REPORT}.")
def command(spec_text: str, bucket: str, s3_endpoint: str | None, region: str, path_style: bool, model: str,
            endpoint: str, judges: tuple[str, ...], max_tokens: int, timeout: float, reach_within: float,
            report_file: Path | None) -> None:
    """Score MODEL at ENDPOINT on the evaluation's JSONL dataset and print the report as JSON.

    Each dataset line is {"prompt": ..., "expected": ...}; the first sampleSize lines are asked,
    greedily (temperature 0), and scored by every scorer; the model passes when the mean score
    reaches the threshold. The report names the dataset object and its version (VersionId, else
    ETag), the score and the examples the model did worst on.

    \b
    Examples:
      sovereign evaluate --spec @evaluation.json --bucket qa-corpus --region me-central-1 \\
          --s3-endpoint https://s3.gov.qa --path-style \\
          --model Qwen/Qwen2.5-72B-Instruct --endpoint http://localhost:8000/v1 \\
          --judge judge=http://judge.gov-qa.svc:8000/v1
    \b
    Exit codes: 0 passed; 1 did not pass, or the dataset or spec is not acceptable; 3 the store or
    an endpoint cannot be reached, or the credentials are rejected.
    """
    evaluation = _evaluation(spec_text)
    judge_urls = _judges(judges)
    try:
        credentials = Credentials.from_mapping(os.environ, source="the environment", required=False)
        store = S3Store(endpoint=s3_endpoint, region=region, credentials=credentials, path_style=path_style)
        result = evaluate(store=store, bucket=bucket, evaluation=evaluation, model=model, endpoint=endpoint,
                          judges=judge_urls, max_tokens=max_tokens, timeout=timeout, reach_within=reach_within)
    except (DatasetError, BucketNotFound, ObjectNotFound) as err:
        _fail(1, str(err), report_file)
    except EndpointUnreachable as err:
        _fail(3, str(err), report_file)
    except EvaluationError as err:
        _fail(1, str(err), report_file)
    except StoreError as err:
        _fail(3, str(err), report_file)
    report = result.report()
    text = json.dumps(report, sort_keys=True, ensure_ascii=False)
    if report_file is not None:
        report_file.write_text(text)
    click.echo(text)
    verdict = "passed" if result.passed else "did not pass"
    click.echo(f"{model} {verdict}: score {result.score:.3f} on {len(result.examples)} examples of "
               f"{result.dataset} (version {result.version}), threshold {result.threshold:g}", err=True)
    sys.exit(0 if result.passed else 1)


def _evaluation(text: str) -> Evaluation:
    """The evaluation block, validated like the stack's own; a usage error naming the field otherwise."""
    import yaml

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as err:
            raise click.BadParameter(f"cannot read {text[1:]}: {err.strerror}", param_hint="--spec") from None
    try:
        evaluation = Evaluation.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as err:
        raise click.BadParameter(f"not an evaluation block (dataset, scorers, threshold): {err}",
                                 param_hint="--spec") from None
    errors = rule_errors(evaluation, path=("evaluation",))
    if errors:
        raise click.BadParameter("; ".join(map(str, errors)), param_hint="--spec")
    return evaluation


def _judges(values: tuple[str, ...]) -> dict[str, str]:
    judges: dict[str, str] = {}
    for item in (part for value in values for part in value.split(",") if part.strip()):
        name, sep, url = item.strip().partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise click.BadParameter(f"{item!r} is not NAME=URL, such as judge=http://judge.ns.svc:8000/v1",
                                     param_hint="--judge")
        judges[name] = url
    return judges


def _fail(code: int, message: str, report_file: Path | None) -> None:
    """Print ``message`` and exit ``code``; the report file gets it too, for the operator to show."""
    click.echo(f"error: {message}", err=True)
    if report_file is not None:
        report_file.write_text(json.dumps({"error": message}))
    sys.exit(code)
