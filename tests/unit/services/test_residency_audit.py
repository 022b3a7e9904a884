"""The audit's status: violations that keep their first-seen time, the ResidencyCompliant condition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sovereign.api import Condition, Residency, ResidencyViolation
from sovereign.policy import residency as policy
from sovereign.policy.residency_store import Decision
from sovereign.services.residency_audit import (
    Finding,
    residency_condition,
    stored_residency,
    violations_from,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
SCOPE = policy.scope_for(namespace="gov", stacks={"citizen": Residency(jurisdiction="QA", regions=["me-central-1"])},
                         labels=None)


def finding(kind: str, name: str, rule: str = "PodOutsideRegions") -> Finding:
    return Finding(kind, "gov", name, Decision(False, rule, f"{kind} gov/{name} breaks {rule}: ..."))


def test_a_violation_keeps_when_it_was_first_seen_and_the_list_is_oldest_first():
    first = violations_from([finding("Pod", "a")], previous=[], now=T0)

    later = violations_from([finding("Service", "web", "LoadBalancerNotAllowed"), finding("Pod", "a")],
                            previous=first, now=T1)

    assert [(v.kind, v.name, v.since) for v in later] == [("Pod", "a", T0), ("Service", "web", T1)]


def test_a_new_rule_on_the_same_object_is_a_new_violation():
    first = violations_from([finding("Pod", "a", "PodNotPinnedToRegions")], previous=[], now=T0)

    later = violations_from([finding("Pod", "a", "PodOutsideRegions")], previous=first, now=T1)

    assert [(v.rule, v.since) for v in later] == [("PodOutsideRegions", T1)]


def test_the_condition_names_the_first_rule_and_keeps_its_transition_time_while_its_status_holds():
    violations = violations_from([finding("Pod", "a"), finding("Pod", "b")], previous=[], now=T0)

    failing = residency_condition(violations, previous=None, generation=3, scope=SCOPE, now=T0)
    still = residency_condition(violations[:1], previous=failing, generation=3, scope=SCOPE, now=T1)
    cleared = residency_condition([], previous=still, generation=3, scope=SCOPE, now=T1)

    assert (failing.status, failing.reason, failing.last_transition_time) == ("False", "PodOutsideRegions", T0)
    assert failing.message == ("2 residency violation(s): Pod gov/a breaks PodOutsideRegions: ...; "
                               "Pod gov/b breaks PodOutsideRegions: ...")
    assert (still.status, still.last_transition_time) == ("False", T0)
    assert (cleared.status, cleared.reason, cleared.last_transition_time) == ("True", policy.IN_REGIONS, T1)
    assert cleared.message == ("every pod, volume, Service and store audited for stack gov/citizen (QA) is "
                               "inside me-central-1")
    assert cleared.observed_generation == 3


def test_the_stored_part_of_the_status_is_read_entry_by_entry():
    body = {"status": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "StackReady", "lastTransitionTime": "2026-03-01T12:00:00Z"},
            {"type": "ResidencyCompliant", "status": "False", "reason": "PodOutsideRegions", "message": "m",
             "lastTransitionTime": "2026-03-01T12:00:00Z"},
        ],
        "violations": [
            {"kind": "Pod", "namespace": "gov", "name": "a", "rule": "PodOutsideRegions",
             "since": "2026-03-01T12:00:00Z"},
            {"kind": "Pod", "name": "no-rule-or-time"},
        ],
    }}

    violations, condition = stored_residency(body)

    assert violations == [ResidencyViolation(kind="Pod", namespace="gov", name="a", rule="PodOutsideRegions",
                                             since=T0)]
    assert condition == Condition(type="ResidencyCompliant", status="False", reason="PodOutsideRegions",
                                  message="m", last_transition_time=T0)
    assert stored_residency({}) == ([], None)
