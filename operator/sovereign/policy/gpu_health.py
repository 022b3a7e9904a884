"""GPU health rules: classify each GPU Healthy / Degraded / Unhealthy, and summarise a node. Pure.

Called by ``services.node_agent`` on every poll; later by the operator, which reads the same
reasons back from the node (condition, taint, label, annotation written by ``kube.nodes``).

The rules follow NVIDIA's XID catalogue and memory-error guidance rather than "any XID is fatal":
- XIDs are sorted into four configurable classes. *Application* XIDs (13, 31, 43, 45, 68, 94)
  end one process and leave the GPU fit for the next; *informational* ones (63: a row remap or
  page retirement was recorded; 92: high single-bit ECC rate) leave it Healthy; *fatal* ones
  (48 double-bit ECC, 62 micro-controller halt, 64 remap/retirement recording failure, 74 NVLink,
  79 fallen off the bus, 95 uncontained ECC, 119/120 GSP) make it Unhealthy until no such XID
  has been seen for ``xid_quiet_window_s``; anything else is *unclassified* (Degraded by default).
- Readings: a lost GPU, uncorrectable volatile ECC errors and a failed row remap are fatal; a row
  remap or page retirement waiting for a reset, or a temperature near shutdown, is Unhealthy but
  not fatal (keep new work off so the GPU can be drained and reset); thermal slowdown, or a
  temperature close to the slowdown threshold, is Degraded. A reading the GPU does not support
  (None) never counts against it.
- Hysteresis: a GPU gets worse at once but gets better only after ``recovery_clean_polls``
  consecutive polls that are all better than what is published, so it does not flap.

Reasons are CamelCase constants; a node condition's reason is ``<fault>OnGPU<index>``
(e.g. ``Xid79OnGPU3``) and its taint value the bare fault (``Xid79``), so tolerations can name it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pynvml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sovereign.nvml.readings import GpuReading


class HealthState(StrEnum):
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"  # node level only: the agent cannot read NVML


class XidClass(StrEnum):
    APPLICATION = "Application"
    INFORMATIONAL = "Informational"
    FATAL = "Fatal"
    UNCLASSIFIED = "Unclassified"


REASON_HEALTHY = "Healthy"
REASON_GPU_LOST = "GPULost"
REASON_UNCORRECTABLE_ECC = "UncorrectableECC"
REASON_ROW_REMAP_FAILURE = "RowRemapFailure"
REASON_ROW_REMAP_PENDING = "RowRemapPending"
REASON_RETIRED_PAGES_PENDING = "RetiredPagesPending"
REASON_THERMAL_NEAR_SHUTDOWN = "ThermalNearShutdown"
REASON_THERMAL_SLOWDOWN = "ThermalSlowdown"
REASON_THERMAL_MARGIN_LOW = "ThermalMarginLow"
# Node-level reasons.
REASON_ALL_HEALTHY = "AllGPUsHealthy"
REASON_NVML_UNAVAILABLE = "NVMLUnavailable"
REASON_NO_GPUS = "NoGPUsFound"

_XID_REASON = re.compile(r"^Xid(\d+)$")

# Short descriptions for messages, in our words, after NVIDIA's XID catalogue.
XID_DESCRIPTIONS: Mapping[int, str] = {
    13: "graphics engine exception in an application",
    31: "GPU memory page fault in an application",
    43: "an application hit an error and its GPU work was stopped",
    45: "GPU work ended early because its process was stopped",
    48: "double-bit (uncorrectable) ECC error",
    62: "internal micro-controller halted",
    63: "memory row remap or page retirement recorded",
    64: "memory row remap or page retirement could not be recorded",
    68: "video processor exception",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained uncorrectable ECC error (the affected application was stopped)",
    95: "uncontained uncorrectable ECC error",
    119: "GSP firmware did not answer (RPC timeout)",
    120: "GSP firmware error",
}

# Clock-event reasons that mean "slowed down because it is too hot".
_THERMAL_CLOCK_EVENTS = (pynvml.nvmlClocksEventReasonSwThermalSlowdown
                         | pynvml.nvmlClocksEventReasonHwThermalSlowdown)


class GpuHealthSettings(BaseModel):
    """Thresholds and XID classes of the health rules (the ``health:`` part of the agent config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fatal_xids: frozenset[int] = Field(
        default=frozenset({48, 62, 64, 74, 79, 95, 119, 120}),
        description="XIDs that make a GPU Unhealthy (fatal) until the quiet window passes.")
    application_xids: frozenset[int] = Field(
        default=frozenset({13, 31, 43, 45, 68, 94}),
        description="XIDs that end one application and leave the GPU Healthy (counted only).")
    informational_xids: frozenset[int] = Field(
        default=frozenset({63, 92}),
        description="XIDs that leave the GPU Healthy (counted only).")
    unclassified_xid_state: HealthState = Field(
        default=HealthState.DEGRADED,
        description="State for an XID in none of the lists: Healthy, Degraded or Unhealthy.")
    xid_quiet_window_s: float = Field(
        default=300, gt=0,
        description="A fatal or unclassified XID counts until this long after its last event.")
    recovery_clean_polls: int = Field(
        default=3, ge=1,
        description="Consecutive better polls before a GPU is published as better again.")
    max_uncorrectable_volatile_ecc: int = Field(
        default=0, ge=0,
        description="More uncorrectable volatile ECC errors than this make the GPU Unhealthy.")
    thermal_slowdown_margin_c: int = Field(
        default=5, ge=0,
        description="Degraded when the temperature is this close to the slowdown threshold.")
    thermal_shutdown_margin_c: int = Field(
        default=2, ge=0,
        description="Unhealthy when the temperature is this close to the shutdown threshold.")

    @model_validator(mode="after")
    def _xid_classes_are_disjoint(self) -> GpuHealthSettings:
        if self.unclassified_xid_state == HealthState.UNKNOWN:
            raise ValueError("unclassified_xid_state: Unknown is for nodes; use Healthy, "
                             "Degraded or Unhealthy")
        lists = {"fatal_xids": self.fatal_xids, "application_xids": self.application_xids,
                 "informational_xids": self.informational_xids}
        names = list(lists)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                shared = lists[first] & lists[second]
                if shared:
                    raise ValueError(
                        f"{first} and {second} both list XID {', '.join(map(str, sorted(shared)))}"
                        f"; remove it from one of them")
        return self

    def xid_class(self, xid: int) -> XidClass:
        if xid in self.fatal_xids:
            return XidClass.FATAL
        if xid in self.application_xids:
            return XidClass.APPLICATION
        if xid in self.informational_xids:
            return XidClass.INFORMATIONAL
        return XidClass.UNCLASSIFIED


@dataclass(frozen=True)
class GpuVerdict:
    """The published health of one GPU; ``reason``/``message`` feed the node condition verbatim."""

    index: int
    uuid: str
    state: HealthState
    reason: str
    message: str
    fatal: bool = False

    @property
    def ok(self) -> bool:
        return self.state == HealthState.HEALTHY


@dataclass(frozen=True)
class GpuMemory:
    """What the rules remember about one GPU between polls."""

    verdict: GpuVerdict
    clean_polls: int = 0
    # Fatal or unclassified XID -> when it was last seen (the caller's monotonic clock).
    xids_seen: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeGpuHealth:
    """The node-level result: what the condition, taint and label of the node should say."""

    state: HealthState
    condition_status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    taint_reason: str | None  # set when some GPU is Unhealthy
    fatal: bool
    gpus: tuple[GpuVerdict, ...] = ()

    @property
    def healthy_gpus(self) -> int:
        return sum(1 for g in self.gpus if g.ok)


@dataclass(frozen=True)
class _Finding:
    state: HealthState
    reason: str
    message: str
    fatal: bool = False

    @property
    def severity(self) -> tuple[int, bool]:
        return _RANK[self.state], self.fatal


_RANK = {HealthState.HEALTHY: 0, HealthState.DEGRADED: 1, HealthState.UNHEALTHY: 2,
         HealthState.UNKNOWN: -1}
_HEALTHY = _Finding(HealthState.HEALTHY, REASON_HEALTHY, "no faults")
_LOST = _Finding(HealthState.UNHEALTHY, REASON_GPU_LOST,
                 "NVML reports the GPU as lost; it needs a GPU reset or a node reboot", fatal=True)


def xid_reason(xid: int) -> str:
    return f"Xid{xid}"


def describe_xid(xid: int) -> str:
    description = XID_DESCRIPTIONS.get(xid)
    return f"XID {xid} ({description})" if description else f"XID {xid}"


def assess_gpu(reading: GpuReading, *, xids: Sequence[int], memory: GpuMemory | None,
               now: float, settings: GpuHealthSettings) -> tuple[GpuVerdict, GpuMemory]:
    """This poll's verdict for one GPU, given the XIDs it raised since the last poll.

    ``now`` is a monotonic time in seconds; ``memory`` is what the previous call returned
    (None on the first poll).
    """
    seen = dict(memory.xids_seen) if memory else {}
    for xid in xids:
        if settings.xid_class(xid) in (XidClass.FATAL, XidClass.UNCLASSIFIED):
            seen[xid] = now
    seen = {xid: at for xid, at in seen.items() if now - at < settings.xid_quiet_window_s}

    # Order breaks ties between equally serious findings: lost, then XIDs, then other readings.
    findings = [_LOST] if reading.lost else []
    findings += [_xid_finding(xid, settings) for xid in sorted(seen)]
    if not reading.lost:
        findings += _reading_findings(reading, settings)
    raw = _worst(findings)
    identity = reading.identity
    fresh = GpuVerdict(index=identity.index, uuid=identity.uuid, state=raw.state,
                       reason=raw.reason, message=raw.message, fatal=raw.fatal)
    if memory is None or raw.severity >= _verdict_severity(memory.verdict):
        return fresh, GpuMemory(verdict=fresh, xids_seen=seen)
    clean = memory.clean_polls + 1
    if clean >= settings.recovery_clean_polls:
        return fresh, GpuMemory(verdict=fresh, xids_seen=seen)
    return memory.verdict, GpuMemory(verdict=memory.verdict, clean_polls=clean, xids_seen=seen)


def restore_memory(verdict: GpuVerdict, *, now: float) -> GpuMemory:
    """Memory for a GPU whose last published verdict is known (an agent restart): a GPU that was
    down for an XID stays down for a full quiet window from now, since the XID event is gone."""
    match = _XID_REASON.match(verdict.reason)
    return GpuMemory(verdict=verdict, xids_seen={int(match.group(1)): now} if match else {})


def summarize_node(verdicts: Sequence[GpuVerdict]) -> NodeGpuHealth:
    """The node condition, taint and label that the GPUs' verdicts call for."""
    gpus = tuple(sorted(verdicts, key=lambda v: v.index))
    if not gpus:
        return unknown_node(reason=REASON_NO_GPUS, message="NVML lists no GPUs on this node")
    bad = sorted((v for v in gpus if not v.ok),
                 key=lambda v: (-_RANK[v.state], not v.fatal, v.index))
    counts = f"{len(gpus) - len(bad)} of {len(gpus)} GPUs healthy"
    if not bad:
        return NodeGpuHealth(state=HealthState.HEALTHY, condition_status="True",
                             reason=REASON_ALL_HEALTHY, message=counts, taint_reason=None,
                             fatal=False, gpus=gpus)
    worst = bad[0]
    unhealthy = [v for v in bad if v.state == HealthState.UNHEALTHY]
    details = "; ".join(f"GPU {v.index} ({v.uuid or 'unknown UUID'}) {v.state}: {v.message}"
                        for v in bad)
    return NodeGpuHealth(
        state=worst.state,
        condition_status="False" if unhealthy else "True",
        reason=f"{worst.reason}OnGPU{worst.index}",
        message=f"{counts}; {details}",
        taint_reason=worst.reason if unhealthy else None,
        fatal=any(v.fatal for v in unhealthy),
        gpus=gpus)


def unknown_node(*, reason: str, message: str) -> NodeGpuHealth:
    """A node whose GPUs cannot be judged (NVML unavailable, no GPUs listed)."""
    return NodeGpuHealth(state=HealthState.UNKNOWN, condition_status="Unknown", reason=reason,
                         message=message, taint_reason=None, fatal=False)


# -- rules --------------------------------------------------------------------------------------

def _reading_findings(reading: GpuReading, settings: GpuHealthSettings) -> list[_Finding]:
    """Findings from the readings of a GPU that answered, most serious kind first."""
    found: list[_Finding] = []
    ecc = reading.ecc_uncorrected_volatile
    if ecc is not None and ecc > settings.max_uncorrectable_volatile_ecc:
        found.append(_Finding(HealthState.UNHEALTHY, REASON_UNCORRECTABLE_ECC,
                              "uncorrectable ECC errors since the last GPU reset; reset the GPU",
                              fatal=True))
    rows = reading.remapped_rows
    if rows is not None and rows.failure:
        found.append(_Finding(HealthState.UNHEALTHY, REASON_ROW_REMAP_FAILURE,
                              "a failing memory row could not be remapped to a spare; the GPU "
                              "needs service", fatal=True))
    if rows is not None and rows.pending:
        found.append(_Finding(HealthState.UNHEALTHY, REASON_ROW_REMAP_PENDING,
                              "a memory row remap is waiting for a GPU reset; drain and reset it"))
    pages = reading.retired_pages
    if pages is not None and pages.pending:
        found.append(_Finding(HealthState.UNHEALTHY, REASON_RETIRED_PAGES_PENDING,
                              "a memory page retirement is waiting for a GPU reset; drain and "
                              "reset it"))
    temp = reading.temperature_c
    if (temp is not None and reading.shutdown_temp_c is not None
            and temp >= reading.shutdown_temp_c - settings.thermal_shutdown_margin_c):
        found.append(_Finding(HealthState.UNHEALTHY, REASON_THERMAL_NEAR_SHUTDOWN,
                              f"temperature is within {settings.thermal_shutdown_margin_c}°C of "
                              f"the {reading.shutdown_temp_c}°C shutdown threshold"))
    events = reading.clock_event_reasons
    if events is not None and events & _THERMAL_CLOCK_EVENTS:
        found.append(_Finding(HealthState.DEGRADED, REASON_THERMAL_SLOWDOWN,
                              "clocks are slowed down because the GPU is too hot"))
    if (temp is not None and reading.slowdown_temp_c is not None
            and temp >= reading.slowdown_temp_c - settings.thermal_slowdown_margin_c):
        found.append(_Finding(HealthState.DEGRADED, REASON_THERMAL_MARGIN_LOW,
                              f"temperature is within {settings.thermal_slowdown_margin_c}°C of "
                              f"the {reading.slowdown_temp_c}°C slowdown threshold"))
    return found


def _xid_finding(xid: int, settings: GpuHealthSettings) -> _Finding:
    fatal = settings.xid_class(xid) == XidClass.FATAL
    state = HealthState.UNHEALTHY if fatal else settings.unclassified_xid_state
    return _Finding(state, xid_reason(xid),
                    f"{describe_xid(xid)}; clears {settings.xid_quiet_window_s:g}s after the "
                    f"last one", fatal=fatal)


def _worst(findings: Sequence[_Finding]) -> _Finding:
    """The most serious finding; among equals the first, so reasons stay stable poll to poll."""
    worst = _HEALTHY
    for finding in findings:
        if finding.severity > worst.severity:
            worst = finding
    return worst


def _verdict_severity(verdict: GpuVerdict) -> tuple[int, bool]:
    return _RANK[verdict.state], verdict.fatal
