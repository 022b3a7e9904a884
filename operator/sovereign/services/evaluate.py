"""Evaluate a model on an in-country dataset: what ``sovereign evaluate`` does.

Reads the JSONL dataset from the stack's S3 store in one GET (``S3Store.read_object``, so the
examples and the version recorded belong together), asks the model under evaluation each
prompt through its OpenAI-compatible endpoint (greedy: temperature 0 and a fixed seed, so a
re-run gives the same answers), scores each answer (``policy.evaluation``; a judge scorer asks
the judge model's own endpoint) and returns the ``EvaluationResult``. Called by ``cli.evaluate``,
which runs in the evaluation Job against the candidate's own Service, or by hand.

An answer the server refuses (an HTTP error status) or does not give in time scores 0 with the
reason in the report: a candidate that fails requests fails its evaluation. A server that cannot
be reached at all is ``EndpointUnreachable``: an environment problem, not a verdict on the model.
Before the first question each endpoint gets ``reach_within`` seconds to accept connections: a
candidate's Service may get its endpoints a moment after the Job starts (kube-proxy, a swap back
to a revision still draining), and refusing then would fail a good model.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sovereign.api import Evaluation
from sovereign.policy.evaluation import (
    EvaluationResult,
    ScoredExample,
    parse_dataset,
    score_answer,
    scorer_label,
)
from sovereign.services.chat import completion_text
from sovereign.stores.s3 import S3Store

#: The largest dataset read whole: 64 MiB of JSONL is far more than MAX_EVALUATION_SAMPLE examples.
DATASET_LIMIT = 64 * 1024 * 1024
DEFAULT_MAX_TOKENS = 128
#: Seconds an endpoint may take to accept connections before it counts as unreachable.
DEFAULT_REACH_WITHIN = 60.0
#: The sampler's seed of every request: with temperature 0 the answers do not change between runs.
SEED = 0


class EvaluationError(RuntimeError):
    """The evaluation could not run; the message says what to fix."""


class EndpointUnreachable(EvaluationError):
    """A model's endpoint (the candidate's or a judge's) does not answer at all."""


class AnswerFailed(Exception):
    """One request got no answer (an HTTP error status, a timeout, no completion)."""


def evaluate(*, store: S3Store, bucket: str, evaluation: Evaluation, model: str, endpoint: str,
             judges: Mapping[str, str], max_tokens: int = DEFAULT_MAX_TOKENS, timeout: float = 120,
             reach_within: float = DEFAULT_REACH_WITHIN,
             clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> EvaluationResult:
    """Score ``model`` served at ``endpoint`` (an OpenAI base URL ending in /v1) on the dataset
    ``evaluation.dataset.path`` of ``bucket``; ``judges`` maps each judge model's name to its base URL."""
    missing = sorted({s.judge.model for s in evaluation.scorers if s.judge} - set(judges))
    if missing:
        raise EvaluationError(f"no endpoint for the judge model(s) {', '.join(missing)}: pass --judge NAME=URL "
                              "for each, such as --judge judge=http://judge.<namespace>.svc:8000/v1")
    key = evaluation.dataset.path
    content = store.read_object(bucket=bucket, key=key, limit=DATASET_LIMIT)
    source = f"s3://{bucket}/{key}"
    try:
        text = content.data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EvaluationError(f"{source} is not UTF-8 text (byte {err.start}); write the dataset as UTF-8 JSONL") from None
    examples = parse_dataset(text=text, sample_size=evaluation.sample_size, source=source)
    for base_url in (endpoint, *(judges[s.judge.model] for s in evaluation.scorers if s.judge)):
        await_endpoint(base_url=base_url, within=reach_within)

    def ask_judge(name: str, messages: list[dict[str, str]]) -> str:
        try:
            return ask(base_url=judges[name], model=name, messages=messages, max_tokens=8, timeout=timeout)
        except AnswerFailed as err:
            return f"(no verdict: {err})"

    scored: list[ScoredExample] = []
    for example in examples:
        try:
            answer, error = ask(base_url=endpoint, model=model, max_tokens=max_tokens, timeout=timeout,
                                messages=[{"role": "user", "content": example.prompt}]), ""
        except AnswerFailed as err:
            answer, error = "", f"(no answer: {err})"
        scores = (dict.fromkeys(map(scorer_label, evaluation.scorers), 0.0) if error else
                  score_answer(scorers=evaluation.scorers, example=example, answer=answer, ask_judge=ask_judge))
        scored.append(ScoredExample(example=example, answer=answer, scores=scores, error=error))
    return EvaluationResult(model=model, dataset=source, version=content.version, threshold=evaluation.threshold,
                            examples=tuple(scored), finished_at=clock())


def await_endpoint(*, base_url: str, within: float) -> None:
    """Return once ``base_url`` answers HTTP at all (any status: it is there), trying each second
    for ``within`` seconds; then ``EndpointUnreachable``."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() >= deadline:
                reason = err.reason if isinstance(err, urllib.error.URLError) else err
                raise EndpointUnreachable(f"cannot reach {base_url} ({reason}) within {within:g}s: check the URL, "
                                          "and that the model's Service has a ready replica") from None
            time.sleep(1)


def ask(*, base_url: str, model: str, messages: list[dict[str, str]], max_tokens: int, timeout: float) -> str:
    """The text of one greedy chat completion from ``base_url``; ``AnswerFailed`` when the server
    gives none, ``EndpointUnreachable`` when there is no server to ask."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": 0, "seed": SEED}
    request = urllib.request.Request(f"{base_url.rstrip('/')}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read().decode())
    except urllib.error.HTTPError as err:
        raise AnswerFailed(f"HTTP {err.code} {err.read()[:200].decode(errors='replace')}") from None
    except (TimeoutError, socket.timeout):
        raise AnswerFailed(f"no answer within {timeout:g}s") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, socket.timeout)):
            raise AnswerFailed(f"no answer within {timeout:g}s") from None
        raise EndpointUnreachable(f"cannot reach {base_url} ({err.reason}): check the URL, and that the "
                                  f"model's Service has a ready replica") from None
    except json.JSONDecodeError:
        raise AnswerFailed("the reply is not JSON") from None
    text = completion_text(reply)
    if text is None and _empty_completion(reply):
        return ""  # the model answered nothing at all: a wrong answer, not a failed request
    if text is None:
        raise AnswerFailed(f"the reply is not a chat completion: {str(reply)[:200]}")
    return text


def _empty_completion(reply: Any) -> bool:
    try:
        return reply["choices"][0]["message"]["content"] in ("", None)
    except (KeyError, IndexError, TypeError):
        return False

