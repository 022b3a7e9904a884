"""``sovereign evaluate``'s input errors: a spec or judge a user got wrong is refused before any
store or model is asked, naming the field and the fix."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sovereign.cli import main as cli

BASE = ["evaluate", "--bucket", "evals", "--region", "me-central-1", "--model", "m",
        "--endpoint", "http://127.0.0.1:9/v1"]
GOOD = {"dataset": {"dataStore": "corpus", "path": "evals/a.jsonl"}, "scorers": [{"contains": {}}], "threshold": 0.5}


@pytest.mark.parametrize(("spec", "message"), [
    ({**GOOD, "scorers": [{"contains": {}, "regex": {}}]},
     "evaluation.scorers[0]: set exactly one of exactMatch, contains, regex or judge"),
    ({**GOOD, "threshold": 2}, "less than or equal to 1"),
    ("dataset: [", "not an evaluation block"),
])
def test_a_bad_spec_is_a_usage_error_naming_the_field(spec, message: str) -> None:
    text = spec if isinstance(spec, str) else json.dumps(spec)

    result = CliRunner().invoke(cli, [*BASE, "--spec", text])

    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_the_spec_is_read_from_a_file_with_an_at_sign(tmp_path) -> None:
    result = CliRunner().invoke(cli, [*BASE, "--spec", f"@{tmp_path / 'missing.yaml'}"])

    assert result.exit_code == 2
    assert "cannot read" in result.stderr and "missing.yaml" in result.stderr


def test_a_judge_that_is_not_name_equals_url_is_refused() -> None:
    result = CliRunner().invoke(cli, [*BASE, "--spec", json.dumps(GOOD), "--judge", "grader:8000"])

    assert result.exit_code == 2
    assert "'grader:8000' is not NAME=URL, such as judge=http://judge.ns.svc:8000/v1" in result.stderr
