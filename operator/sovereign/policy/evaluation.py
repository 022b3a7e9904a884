"""Scoring a model's answers against an in-country dataset: the pure half of ``sovereign evaluate``.

A dataset is JSONL, one example a line: ``{"prompt": "...", "expected": "..."}``. Each answer is
scored by every scorer of ``spec.models[].evaluation.scorers``, 1 (right) or 0 (wrong); an example
scores the mean of its scorers, the evaluation the mean of its examples, and it passes when that
reaches the threshold. The judge scorer asks another model of the stack (the caller passes the
question to it as ``ask_judge``, so this module does no I/O) and reads a reply whose first word is
PASS as a pass. What an auditor needs is in ``EvaluationResult.report()``: the dataset object and
its version, the score, the threshold, and the examples it did worst on.

Pure; called by ``services.evaluate`` (and its results read back by the reconciler from the
evaluation Job's termination message).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sovereign.api import Scorer

#: Examples the report (and the stack's status) shows, worst first, and how much of each text.
WORST_SHOWN = 3
SHOWN_CHARS = 200
PASS_WORD = "PASS"

#: Asks the judge model ``name`` with these chat messages; its reply's text.
AskJudge = Callable[[str, list[dict[str, str]]], str]


class DatasetError(ValueError):
    """The dataset cannot be scored; the message names the line and what to fix."""


@dataclass(frozen=True)
class Example:
    """One line of the dataset."""

    line: int
    prompt: str
    expected: str


@dataclass(frozen=True)
class ScoredExample:
    """An example, the candidate's answer, and what each scorer gave it (by ``scorer_label``)."""

    example: Example
    answer: str
    scores: dict[str, float]
    error: str = ""

    @property
    def score(self) -> float:
        return sum(self.scores.values()) / len(self.scores) if self.scores else 0.0


@dataclass(frozen=True)
class EvaluationResult:
    """A finished evaluation of ``model`` on ``dataset`` (s3://bucket/key) at ``version``."""

    model: str
    dataset: str
    version: str
    threshold: float
    examples: tuple[ScoredExample, ...]
    finished_at: datetime
    details: dict[str, str] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(e.score for e in self.examples) / len(self.examples) if self.examples else 0.0

    @property
    def passed(self) -> bool:
        return bool(self.examples) and self.score >= self.threshold

    def worst(self, count: int = WORST_SHOWN) -> list[ScoredExample]:
        """The ``count`` lowest-scoring examples below a full score, lowest first, then by line."""
        below = [e for e in self.examples if e.score < 1]
        return sorted(below, key=lambda e: (e.score, e.example.line))[:count]

    def report(self) -> dict[str, object]:
        """The report as JSON: small enough for a container's termination message (4096 bytes)."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "version": self.version,
            "examples": len(self.examples),
            "score": round(self.score, 4),
            "threshold": self.threshold,
            "passed": self.passed,
            "finishedAt": self.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "worstExamples": [
                {"line": e.example.line, "prompt": _short(e.example.prompt), "expected": _short(e.example.expected),
                 "answer": _short(e.error or e.answer), "score": round(e.score, 4)}
                for e in self.worst()
            ],
        }


def parse_dataset(*, text: str, sample_size: int, source: str) -> list[Example]:
    """The first ``sample_size`` examples of the JSONL ``text`` (blank lines skipped), so a
    re-run scores the same ones; ``DatasetError`` naming the first bad line of ``source``."""
    examples: list[Example] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if len(examples) == sample_size:
            break
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{source} line {number} is not JSON ({err.msg}); each line must be "
                               '{"prompt": "...", "expected": "..."}') from None
        if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in ("prompt", "expected")):
            raise DatasetError(f"{source} line {number} needs a string prompt and a string expected, such as "
                               '{"prompt": "Capital of Qatar?", "expected": "Doha"}')
        if not item["prompt"].strip():
            raise DatasetError(f"{source} line {number} has an empty prompt")
        examples.append(Example(line=number, prompt=item["prompt"], expected=item["expected"]))
    if not examples:
        raise DatasetError(f"{source} has no examples; write one JSON object a line: "
                           '{"prompt": "...", "expected": "..."}')
    return examples


def scorer_label(scorer: Scorer) -> str:
    """How reports name a scorer: its kind, and the judge's model."""
    return f"judge:{scorer.judge.model}" if scorer.judge is not None else scorer.kinds()[0]


def score_answer(*, scorers: Sequence[Scorer], example: Example, answer: str,
                 ask_judge: AskJudge) -> dict[str, float]:
    """What each scorer gives ``answer`` to ``example``, by ``scorer_label``."""
    return {scorer_label(scorer): _score(scorer, example, answer, ask_judge) for scorer in scorers}


def _score(scorer: Scorer, example: Example, answer: str, ask_judge: AskJudge) -> float:
    if scorer.exact_match is not None:
        return float(_fold(answer.strip(), scorer.exact_match.case_sensitive)
                     == _fold(example.expected.strip(), scorer.exact_match.case_sensitive))
    if scorer.contains is not None:
        return float(_fold(example.expected.strip(), scorer.contains.case_sensitive)
                     in _fold(answer, scorer.contains.case_sensitive))
    if scorer.regex is not None:
        flags = 0 if scorer.regex.case_sensitive else re.IGNORECASE
        try:
            pattern = re.compile(example.expected, flags)
        except re.error as err:
            raise DatasetError(f"line {example.line}: expected is not a regular expression ({err}), and a regex "
                               "scorer reads it as one; escape it, or use contains") from None
        return float(pattern.search(answer) is not None)
    assert scorer.judge is not None, "a validated scorer sets exactly one kind"
    reply = ask_judge(scorer.judge.model, judge_messages(instructions=scorer.judge.instructions,
                                                         example=example, answer=answer))
    return judge_verdict(reply)


def judge_messages(*, instructions: str, example: Example, answer: str) -> list[dict[str, str]]:
    """The chat a judge gets: its instructions, then the question, the expected and the given answer."""
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": f"Question: {example.prompt}\nExpected answer: {example.expected}\n"
                                    f"Answer to grade: {answer}\nReply PASS or FAIL."},
    ]


def judge_verdict(reply: str) -> float:
    """1 when the judge's reply starts with the word PASS (any case, after punctuation), else 0."""
    words = re.findall(r"[A-Za-z]+", reply)
    return float(bool(words) and words[0].upper() == PASS_WORD)


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
