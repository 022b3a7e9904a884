"""The residency report shows each evaluated model's lineage: which model served, from when to
when, admitted by which evaluation of which dataset version (HTML for the auditor, JSON to archive)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sovereign.api import EvaluationEvidence, ServingRecord
from sovereign.report import render
from sovereign.services.residency_report import (
    AdmissionEvidence,
    Check,
    Evidence,
    ModelLineage,
    StackFacts,
)

PASSED = EvaluationEvidence(model="tiny-b", dataset="s3://weights/evals/chat.jsonl", version="3f2a9c", examples=20,
                            score=0.95, threshold=0.8, passed=True, job="chat-eval-1a2b3c4d5e",
                            finished_at=datetime(2026, 11, 30, 17, 59, tzinfo=UTC))


def _evidence() -> Evidence:
    return Evidence(
        generated_at=datetime(2026, 11, 30, 18, 30, tzinfo=UTC), operator_version="0.1.0",
        stack=StackFacts(name="citizen", namespace="gov-qa", uid="u", generation=3, jurisdiction="QA",
                         regions=["me-central-1"], enforcement="Enforce", allow_load_balancer=False,
                         allow_node_port=False, egress_cidrs=[]),
        compliant=True, stack_check=Check(ok=True, reason="Compliant", message=""), conditions=[], violations=[],
        pods=[], volumes=[], services=[], stores=[],
        admission=AdmissionEvidence(namespace_governed=True, enforcement="Enforce", parameters={}, policies=[],
                                    configurations_present=[], webhooks=[]),
        lineage=[ModelLineage(name="chat", history=[
            ServingRecord(model="tiny-a", revision="aaaa", since=datetime(2026, 11, 29, tzinfo=UTC),
                          until=datetime(2026, 11, 30, 18, 0, tzinfo=UTC), admission="Initial"),
            ServingRecord(model="tiny-b", revision="bbbb", since=datetime(2026, 11, 30, 18, 0, tzinfo=UTC),
                          admission="Evaluated", evaluation=PASSED)])])


def test_the_html_report_has_a_row_per_model_that_served_with_its_evidence() -> None:
    html = render(_evidence(), fmt="html")

    table = html[html.index('<table id="lineage">'):]
    table = table[:table.index("</table>")]
    assert "<td>tiny-a</td><td>2026-11-29T00:00:00Z</td><td>2026-11-30T18:00:00Z</td><td>Initial</td>" in table
    assert "no evaluation" in table
    assert "<td>tiny-b</td><td>2026-11-30T18:00:00Z</td><td>serving</td><td>Evaluated</td>" in table
    assert "s3://weights/evals/chat.jsonl (3f2a9c)" in table and "0.95 / 0.8" in table and "chat-eval-1a2b3c4d5e" in table


def test_the_json_report_carries_the_lineage() -> None:
    lineage = json.loads(render(_evidence(), fmt="json"))["lineage"]

    assert [(e["name"], [r["model"] for r in e["history"]]) for e in lineage] == [("chat", ["tiny-a", "tiny-b"])]
    assert lineage[0]["history"][1]["evaluation"]["version"] == "3f2a9c"
    assert lineage[0]["history"][1]["since"] == "2026-11-30T18:00:00Z"
