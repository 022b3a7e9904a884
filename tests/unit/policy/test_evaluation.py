"""Scoring answers against an in-country dataset (policy.evaluation): each scorer, the dataset's
errors as a user reads them, and the report an auditor gets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sovereign.api import Scorer
from sovereign.policy.evaluation import (
    DatasetError,
    EvaluationResult,
    Example,
    ScoredExample,
    judge_messages,
    judge_verdict,
    parse_dataset,
    score_answer,
)

DOHA = Example(line=1, prompt="What is the capital of Qatar?", expected="Doha")


def _no_judge(name: str, messages: list[dict[str, str]]) -> str:
    raise AssertionError(f"judge {name} asked without a judge scorer")


def _score(scorer: dict, answer: str, example: Example = DOHA) -> float:
    (value,) = score_answer(scorers=[Scorer.model_validate(scorer)], example=example, answer=answer,
                            ask_judge=_no_judge).values()
    return value


@pytest.mark.parametrize(("answer", "scorer", "score"), [
    ("Doha", {"exactMatch": {}}, 1.0),
    ("  doha\n", {"exactMatch": {}}, 1.0),
    ("doha", {"exactMatch": {"caseSensitive": True}}, 0.0),
    ("Doha.", {"exactMatch": {}}, 0.0),
    ("The capital is Doha.", {"contains": {}}, 1.0),
    ("The capital is DOHA.", {"contains": {}}, 1.0),
    ("The capital is DOHA.", {"contains": {"caseSensitive": True}}, 0.0),
    ("The capital is Riyadh.", {"contains": {}}, 0.0),
])
def test_text_scorers(answer: str, scorer: dict, score: float) -> None:
    assert _score(scorer, answer) == score


def test_regex_scorer_reads_expected_as_a_pattern() -> None:
    year = Example(line=4, prompt="When did Qatar become independent?", expected=r"\b1971\b")

    assert _score({"regex": {}}, "In 1971, on 3 September.", year) == 1.0
    assert _score({"regex": {}}, "In 19710.", year) == 0.0
    assert _score({"regex": {}}, "DOHA", DOHA) == 1.0
    assert _score({"regex": {"caseSensitive": True}}, "DOHA", DOHA) == 0.0


def test_regex_scorer_names_the_line_of_a_pattern_that_does_not_compile() -> None:
    broken = Example(line=7, prompt="?", expected="(unclosed")

    with pytest.raises(DatasetError, match=r"line 7: expected is not a regular expression .* use contains"):
        _score({"regex": {}}, "anything", broken)


def test_judge_is_asked_by_name_with_question_expected_and_answer() -> None:
    asked: list[tuple[str, list[dict[str, str]]]] = []

    def judge(name: str, messages: list[dict[str, str]]) -> str:
        asked.append((name, messages))
        return "PASS - same city"

    scores = score_answer(scorers=[Scorer.model_validate({"judge": {"model": "grader", "instructions": "Be strict."}})],
                          example=DOHA, answer="It is Doha", ask_judge=judge)

    assert scores == {"judge:grader": 1.0}
    ((name, messages),) = asked
    assert name == "grader"
    assert messages == judge_messages(instructions="Be strict.", example=DOHA, answer="It is Doha")
    assert messages[0] == {"role": "system", "content": "Be strict."}
    assert "Question: What is the capital of Qatar?" in messages[1]["content"]
    assert "Expected answer: Doha" in messages[1]["content"]
    assert "Answer to grade: It is Doha" in messages[1]["content"]


@pytest.mark.parametrize(("reply", "score"), [
    ("PASS", 1.0), ("pass.", 1.0), ("**Pass**", 1.0), ("  PASS: correct", 1.0),
    ("FAIL", 0.0), ("Passing grade? no", 0.0), ("", 0.0), ("I think PASS", 0.0), ("(no verdict: HTTP 500)", 0.0),
])
def test_judge_verdict_is_the_first_word(reply: str, score: float) -> None:
    assert judge_verdict(reply) == score


def test_an_example_scores_the_mean_of_its_scorers() -> None:
    scores = score_answer(scorers=[Scorer.model_validate(s) for s in ({"exactMatch": {}}, {"contains": {}})],
                          example=DOHA, answer="Doha, of course", ask_judge=_no_judge)

    assert scores == {"exactMatch": 0.0, "contains": 1.0}
    assert ScoredExample(example=DOHA, answer="Doha, of course", scores=scores).score == 0.5


def test_dataset_takes_the_first_sample_size_examples_skipping_blank_lines() -> None:
    text = '{"prompt": "a", "expected": "1"}\n\n{"prompt": "b", "expected": "2"}\n{"prompt": "c", "expected": "3"}\n'

    examples = parse_dataset(text=text, sample_size=2, source="s3://evals/x.jsonl")

    assert examples == [Example(line=1, prompt="a", expected="1"), Example(line=3, prompt="b", expected="2")]


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "a", "expected": "1"}\nnot json\n', r"s3://b/k.jsonl line 2 is not JSON"),
    ('{"prompt": "a"}\n', r"line 1 needs a string prompt and a string expected"),
    ('{"prompt": "a", "expected": 3}\n', r"line 1 needs a string prompt and a string expected"),
    ('["a", "1"]\n', r"line 1 needs a string prompt"),
    ('{"prompt": " ", "expected": "1"}\n', r"line 1 has an empty prompt"),
    ("\n\n", r"s3://b/k.jsonl has no examples"),
])
def test_dataset_errors_name_the_line_and_the_shape(text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_dataset(text=text, sample_size=10, source="s3://b/k.jsonl")


def _result(scores: list[float], threshold: float) -> EvaluationResult:
    examples = tuple(ScoredExample(example=Example(line=n, prompt=f"q{n}" * 150, expected=f"e{n}"), answer=f"a{n}",
                                   scores={"contains": s}) for n, s in enumerate(scores, start=1))
    return EvaluationResult(model="tiny-b", dataset="s3://evals/chat.jsonl", version="3f2a", threshold=threshold,
                            examples=examples, finished_at=datetime(2026, 11, 30, 18, 0, tzinfo=UTC))


def test_report_has_score_verdict_dataset_version_and_the_worst_examples() -> None:
    report = _result([1, 0, 0.5, 1, 0], threshold=0.8).report()

    assert {k: report[k] for k in ("model", "dataset", "version", "examples", "score", "threshold", "passed",
                                   "finishedAt")} == {
        "model": "tiny-b", "dataset": "s3://evals/chat.jsonl", "version": "3f2a", "examples": 5,
        "score": 0.5, "threshold": 0.8, "passed": False, "finishedAt": "2026-11-30T18:00:00Z"}
    worst = report["worstExamples"]
    assert [(w["line"], w["score"]) for w in worst] == [(2, 0.0), (5, 0.0), (3, 0.5)]
    assert len(worst[0]["prompt"]) == 200 and worst[0]["prompt"].endswith("…")
    assert worst[0]["answer"] == "a2"


def test_a_score_at_the_threshold_passes_and_shows_no_example_with_full_marks() -> None:
    result = _result([1, 1, 1, 0.5], threshold=0.875)

    assert result.passed
    assert [w["line"] for w in result.report()["worstExamples"]] == [4]
    assert not _result([], threshold=0).passed
