"""GPU health rules: classify each GPU Healthy / Degraded / Unhealthy, and summarise a node. Pure.

Called by ``services.node_agent`` on every poll; later by the operator, which reads the same
reasons back from the node (condition, taint, label, annotation written by ``kube.nodes``).

The rules follow NVIDIA's XID catalogue (its "Resolution Bucket (Immediate Action)" column,
https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html) and its memory-error
guidance, rather than "any XID is fatal":
- XIDs are sorted into the catalogue's classes (configurable). *Application* XIDs (RESTART_APP:
  13, 31, 43, 45, 68, 94, ...) end one process and leave the GPU fit for the next;
  *informational* ones (63 a row remap or page retirement recorded, 92 high single-bit ECC rate)
  leave it Healthy; *reset* XIDs (RESET_GPU: 48, 62, 64, 74, 95, 109, 110, 119, 120, 136, 140,
  143, 154, 155, 156, 158) and *reboot* XIDs (RESTART_BM: 79) make it Unhealthy and fatal and are
  **held until the recovery NVIDIA prescribes is observed**, never released by time alone. An
  XID the catalogue table here does not list gets ``unclassified_xid_state`` (Degraded by
  default) until ``xid_quiet_window_s`` passes without another.
- Observing a recovery: NVML's recovery-action field (``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION``,
  drivers R555 and newer) reads GPU_RESET / NODE_REBOOT / ... while the driver wants one and
  None again once it was done; a change from an action back to None releases the held XIDs.
  Without that field (older drivers), only a node reboot releases them: the agent records the
  node's boot ID with the held XIDs and a different boot ID at start means the node rebooted
  (``restore_memory(rebooted=True)``). A GPU reset that no reading shows stays unseen, so the
  GPU stays held: the safe side.
- Remediation stops at a cap: after ``max_resets`` observed resets since the node booted, a GPU
  whose faults come back is not returned to service again (``RepeatedFaults``) until a reboot,
  so a failing GPU cannot cycle fault -> reset -> fault.
- The recovery action itself is a reading: GPU_RESET / DRAIN_AND_RESET / BUS_RESET and
  NODE_REBOOT / SYSTEM_REBOOT are fatal, DRAIN_P2P and RECOVER_IMEX_DOMAIN Unhealthy.
- Readings: a lost GPU, uncorrectable volatile ECC errors and a failed row remap are fatal; a row
  remap or page retirement waiting for a reset, or a temperature near shutdown, is Unhealthy but
  not fatal (keep new work off so the GPU can be drained and reset); thermal slowdown, or a
  temperature close to the slowdown threshold, is Degraded. A reading the GPU does not support
  (None) never counts against it.
- The NVIDIA device plugin's view: it marks a GPU unhealthy, for good (until it restarts), on
  any XID but the few it skips (13, 31, 43, 45, 68, 109 in k8s-device-plugin v0.20.0). A GPU
  this agent calls usable that the plugin has withdrawn (63, 92, 94, ...) is named in the node
  condition's message, so the allocatable GPU count and the condition do not silently disagree.
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
    """An XID's class, after the catalogue's immediate action."""

    APPLICATION = "Application"  # RESTART_APP
    INFORMATIONAL = "Informational"  # IGNORE
    RESET = "Reset"  # RESET_GPU: held until a GPU reset (or a reboot) is observed
    REBOOT = "Reboot"  # RESTART_BM: held until the node reboots
    UNCLASSIFIED = "Unclassified"  # not in the table: unclassified_xid_state for a quiet window


REASON_HEALTHY = "Healthy"
REASON_GPU_LOST = "GPULost"
REASON_UNCORRECTABLE_ECC = "UncorrectableECC"
REASON_ROW_REMAP_FAILURE = "RowRemapFailure"
REASON_ROW_REMAP_PENDING = "RowRemapPending"
REASON_RETIRED_PAGES_PENDING = "RetiredPagesPending"
REASON_THERMAL_NEAR_SHUTDOWN = "ThermalNearShutdown"
REASON_THERMAL_SLOWDOWN = "ThermalSlowdown"
REASON_THERMAL_MARGIN_LOW = "ThermalMarginLow"
REASON_RESET_REQUIRED = "GPUResetRequired"
REASON_REBOOT_REQUIRED = "NodeRebootRequired"
REASON_DRAIN_P2P = "DrainP2P"
REASON_RECOVER_IMEX = "RecoverIMEXDomain"
REASON_REPEATED_FAULTS = "RepeatedFaults"
# Node-level reasons.
REASON_ALL_HEALTHY = "AllGPUsHealthy"
REASON_NVML_UNAVAILABLE = "NVMLUnavailable"
REASON_NO_GPUS = "NoGPUsFound"

_XID_REASON = re.compile(r"^Xid(\d+)$")

# Short descriptions for messages, in our words, after NVIDIA's XID catalogue.
XID_DESCRIPTIONS: Mapping[int, str] = {
    8: "GPU stopped processing (an application's channel timed out)",
    11: "invalid or corrupted push buffer stream",
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
    109: "context switch timeout",
    110: "security fault",
    119: "GSP firmware did not answer (RPC timeout)",
    120: "GSP firmware error",
    136: "link training failed (GPU reset required)",
    140: "unrecovered ECC error in an internal engine",
    143: "GPU initialisation failed",
    154: "GPU recovery action changed (the driver asks for a reset or a reboot)",
    155: "NVLink link down",
    156: "resource retirement event",
    158: "GPU fatal timeout",
}

# NVML recovery actions (nvmlDeviceGpuRecoveryAction_t), by what they ask of the operator.
RECOVERY_ACTION_NAMES: Mapping[int, str] = {
    pynvml.NVML_GPU_RECOVERY_ACTION_NONE: "None",
    pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET: "GPU reset",
    pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT: "node reboot",
    pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_P2P: "drain peer-to-peer traffic",
    pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET: "drain peer-to-peer traffic, then GPU reset",
    pynvml.NVML_GPU_RECOVERY_ACTION_RECOVER_IMEX_DOMAIN: "recover the IMEX domain",
    pynvml.NVML_GPU_RECOVERY_ACTION_BUS_RESET: "PCIe bus reset",
    pynvml.NVML_GPU_RECOVERY_ACTION_SYSTEM_REBOOT: "system reboot",
}
_RESET_ACTIONS = frozenset({pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET,
                            pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET,
                            pynvml.NVML_GPU_RECOVERY_ACTION_BUS_RESET})
_REBOOT_ACTIONS = frozenset({pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT,
                             pynvml.NVML_GPU_RECOVERY_ACTION_SYSTEM_REBOOT})

#: XIDs the NVIDIA k8s-device-plugin (v0.20.0, internal/rm/health.go) does not count against a
#: GPU; every other XID makes it withdraw the GPU from allocatable until the plugin restarts.
DEVICE_PLUGIN_SKIPPED_XIDS = frozenset({13, 31, 43, 45, 68, 109})

# Clock-event reasons that mean "slowed down because it is too hot".
_THERMAL_CLOCK_EVENTS = (pynvml.nvmlClocksEventReasonSwThermalSlowdown
                         | pynvml.nvmlClocksEventReasonHwThermalSlowdown)


class GpuHealthSettings(BaseModel):
    """Thresholds and XID classes of the health rules (the ``health:`` part of the agent config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reset_xids: frozenset[int] = Field(
        default=frozenset({48, 62, 64, 74, 95, 109, 110, 119, 120, 136, 140, 143, 154, 155, 156,
                           158}),
        description="XIDs whose catalogue action is RESET_GPU: Unhealthy (fatal) until a GPU "
                    "reset or a node reboot is observed.")
    reboot_xids: frozenset[int] = Field(
        default=frozenset({79}),
        description="XIDs whose catalogue action is RESTART_BM: Unhealthy (fatal) until the node "
                    "reboots (or NVML's recovery action returns to None).")
    application_xids: frozenset[int] = Field(
        default=frozenset({8, 11, 13, 31, 43, 45, 68, 94}),
        description="XIDs that end one application and leave the GPU Healthy (counted only).")
    informational_xids: frozenset[int] = Field(
        default=frozenset({63, 92}),
        description="XIDs that leave the GPU Healthy (counted only).")
    unclassified_xid_state: HealthState = Field(
        default=HealthState.DEGRADED,
        description="State for an XID in none of the lists: Healthy, Degraded or Unhealthy.")
    xid_quiet_window_s: float = Field(
        default=300, gt=0,
        description="An unclassified XID counts until this long after its last event.")
    max_resets: int = Field(
        default=3, ge=0,
        description="Observed resets per boot after which a GPU whose faults return stays "
                    "Unhealthy (RepeatedFaults) until the node reboots.")
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
    device_plugin_skipped_xids: frozenset[int] | None = Field(
        default=DEVICE_PLUGIN_SKIPPED_XIDS,
        description="XIDs the NVIDIA device plugin ignores (its built-in list plus "
                    "DP_DISABLE_HEALTHCHECKS); null when no device plugin runs on the node.")

    @model_validator(mode="after")
    def _xid_classes_are_disjoint(self) -> GpuHealthSettings:
        if self.unclassified_xid_state == HealthState.UNKNOWN:
            raise ValueError("unclassified_xid_state: Unknown is for nodes; use Healthy, "
                             "Degraded or Unhealthy")
        lists = {"reset_xids": self.reset_xids, "reboot_xids": self.reboot_xids,
                 "application_xids": self.application_xids,
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
        if xid in self.reset_xids:
            return XidClass.RESET
        if xid in self.reboot_xids:
            return XidClass.REBOOT
        if xid in self.application_xids:
            return XidClass.APPLICATION
        if xid in self.informational_xids:
            return XidClass.INFORMATIONAL
        return XidClass.UNCLASSIFIED

    def withdrawn_by_device_plugin(self, xid: int) -> bool:
        return self.device_plugin_skipped_xids is not None and \
            xid not in self.device_plugin_skipped_xids


@dataclass(frozen=True)
class GpuVerdict:
    """The published health of one GPU; ``reason``/``message`` feed the node condition verbatim.

    ``held_xids`` are the reset/reboot-class XIDs holding it down, ``resets`` the resets
    observed since the node booted, ``device_plugin_xid`` the first XID that made the NVIDIA
    device plugin withdraw it (None while the plugin still offers it): all three are stored on
    the node, so a restarted agent carries on where the last one stopped.
    """

    index: int
    uuid: str
    state: HealthState
    reason: str
    message: str
    fatal: bool = False
    held_xids: tuple[int, ...] = ()
    resets: int = 0
    device_plugin_xid: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == HealthState.HEALTHY


@dataclass(frozen=True)
class GpuMemory:
    """What the rules remember about one GPU between polls."""

    verdict: GpuVerdict
    clean_polls: int = 0
    # Unclassified XID -> when it was last seen (the caller's monotonic clock).
    xids_seen: Mapping[int, float] = field(default_factory=dict)
    # Reset/reboot-class XIDs, held until a recovery is observed.
    held: frozenset[int] = frozenset()
    # The recovery action read last time (None: never read, or the driver has no such field).
    recovery_action: int | None = None
    resets: int = 0
    # Faults came back after max_resets resets: not released again until a reboot.
    retired: bool = False
    device_plugin_xid: int | None = None


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
    held = set(memory.held) if memory else set()
    resets = memory.resets if memory else 0
    retired = memory.retired if memory else False
    plugin_xid = memory.device_plugin_xid if memory else None

    # A recovery the driver asked for was done: its action went back to None. Resets are counted
    # first, so XIDs of this same poll (raised after the reset) are held again.
    before = memory.recovery_action if memory else None
    action = reading.recovery_action if not reading.lost else before
    if before not in (None, pynvml.NVML_GPU_RECOVERY_ACTION_NONE) and \
            action == pynvml.NVML_GPU_RECOVERY_ACTION_NONE:
        if held and resets >= settings.max_resets:
            retired = True
        else:
            resets += 1
            held = set()

    for xid in xids:
        kind = settings.xid_class(xid)
        if kind in (XidClass.RESET, XidClass.REBOOT):
            held.add(xid)
        elif kind == XidClass.UNCLASSIFIED:
            seen[xid] = now
        if plugin_xid is None and settings.withdrawn_by_device_plugin(xid):
            plugin_xid = xid
    seen = {xid: at for xid, at in seen.items() if now - at < settings.xid_quiet_window_s}

    # Order breaks ties between equally serious findings: lost, then XIDs, then other readings.
    findings = [_LOST] if reading.lost else []
    if retired:
        findings.append(_Finding(
            HealthState.UNHEALTHY, REASON_REPEATED_FAULTS,
            f"faults came back after {resets} GPU resets since the node booted; not returned to "
            f"service again until the node reboots (have it serviced)", fatal=True))
    findings += [_held_finding(xid, settings) for xid in sorted(held)]
    findings += [_unclassified_finding(xid, settings) for xid in sorted(seen)]
    if not reading.lost:
        findings += _reading_findings(reading, settings)
    raw = _worst(findings)
    identity = reading.identity
    fresh = GpuVerdict(index=identity.index, uuid=identity.uuid, state=raw.state,
                       reason=raw.reason, message=raw.message, fatal=raw.fatal,
                       held_xids=tuple(sorted(held)), resets=resets,
                       device_plugin_xid=plugin_xid)
    kept = {"xids_seen": seen, "held": frozenset(held), "recovery_action": action,
            "resets": resets, "retired": retired, "device_plugin_xid": plugin_xid}
    if memory is None or raw.severity >= _verdict_severity(memory.verdict):
        return fresh, GpuMemory(verdict=fresh, **kept)
    clean = memory.clean_polls + 1
    if clean >= settings.recovery_clean_polls:
        return fresh, GpuMemory(verdict=fresh, **kept)
    # Still publishing the worse verdict, but with what is held now.
    published = GpuVerdict(**{**memory.verdict.__dict__, "held_xids": fresh.held_xids,
                              "resets": resets, "device_plugin_xid": plugin_xid})
    return published, GpuMemory(verdict=published, clean_polls=clean, **kept)


def restore_memory(verdict: GpuVerdict, *, now: float, rebooted: bool,
                   settings: GpuHealthSettings) -> GpuMemory | None:
    """Memory for a GPU whose last published verdict is known (an agent restart).

    After a reboot (the node's boot ID changed) every held fault, the reset count and the device
    plugin's withdrawal (the plugin restarted too) are gone: None, a fresh start. Otherwise held
    XIDs stay held, and an unclassified XID counts for a full quiet window from now, since the
    XID event itself is gone.
    """
    if rebooted:
        return None
    held = set(verdict.held_xids)
    seen: dict[int, float] = {}
    match = _XID_REASON.match(verdict.reason)
    if match:
        xid = int(match.group(1))
        if settings.xid_class(xid) in (XidClass.RESET, XidClass.REBOOT):
            held.add(xid)  # a record written before held XIDs were stored
        elif settings.xid_class(xid) == XidClass.UNCLASSIFIED:
            seen[xid] = now
    return GpuMemory(verdict=verdict, xids_seen=seen, held=frozenset(held),
                     resets=verdict.resets, retired=verdict.reason == REASON_REPEATED_FAULTS,
                     device_plugin_xid=verdict.device_plugin_xid)


def summarize_node(verdicts: Sequence[GpuVerdict]) -> NodeGpuHealth:
    """The node condition, taint and label that the GPUs' verdicts call for."""
    gpus = tuple(sorted(verdicts, key=lambda v: v.index))
    if not gpus:
        return unknown_node(reason=REASON_NO_GPUS, message="NVML lists no GPUs on this node")
    bad = sorted((v for v in gpus if not v.ok),
                 key=lambda v: (-_RANK[v.state], not v.fatal, v.index))
    counts = f"{len(gpus) - len(bad)} of {len(gpus)} GPUs healthy"
    plugin = _device_plugin_note(gpus)
    if not bad:
        return NodeGpuHealth(state=HealthState.HEALTHY, condition_status="True",
                             reason=REASON_ALL_HEALTHY, message=counts + plugin,
                             taint_reason=None, fatal=False, gpus=gpus)
    worst = bad[0]
    unhealthy = [v for v in bad if v.state == HealthState.UNHEALTHY]
    details = "; ".join(f"GPU {v.index} ({v.uuid or 'unknown UUID'}) {v.state}: {v.message}"
                        for v in bad)
    return NodeGpuHealth(
        state=worst.state,
        condition_status="False" if unhealthy else "True",
        reason=f"{worst.reason}OnGPU{worst.index}",
        message=f"{counts}; {details}{plugin}",
        taint_reason=worst.reason if unhealthy else None,
        fatal=any(v.fatal for v in unhealthy),
        gpus=gpus)


def unknown_node(*, reason: str, message: str) -> NodeGpuHealth:
    """A node whose GPUs cannot be judged (NVML unavailable, no GPUs listed)."""
    return NodeGpuHealth(state=HealthState.UNKNOWN, condition_status="Unknown", reason=reason,
                         message=message, taint_reason=None, fatal=False)


# -- rules --------------------------------------------------------------------------------------

def _device_plugin_note(gpus: Sequence[GpuVerdict]) -> str:
    """Where the device plugin and these rules disagree about a GPU being usable, say so: the
    node's allocatable nvidia.com/gpu then differs from its count of healthy GPUs."""
    withdrawn = [v for v in gpus if v.device_plugin_xid is not None
                 and v.state != HealthState.UNHEALTHY]
    if not withdrawn:
        return ""
    listed = ", ".join(f"GPU {v.index} (since {describe_xid(v.device_plugin_xid or 0)})"
                       for v in withdrawn)
    return (f"; the NVIDIA device plugin has withdrawn {listed} from allocatable nvidia.com/gpu "
            f"although this agent finds it usable; it offers it again only when the device "
            f"plugin pod restarts")


def _reading_findings(reading: GpuReading, settings: GpuHealthSettings) -> list[_Finding]:
    """Findings from the readings of a GPU that answered, most serious kind first."""
    found: list[_Finding] = []
    action = reading.recovery_action
    if action is not None and action != pynvml.NVML_GPU_RECOVERY_ACTION_NONE:
        found.append(_recovery_finding(action))
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


def _recovery_finding(action: int) -> _Finding:
    asked = RECOVERY_ACTION_NAMES.get(action, f"recovery action {action}")
    message = f"the driver asks for a {asked} (NVML recovery action {action})"
    if action in _RESET_ACTIONS:
        return _Finding(HealthState.UNHEALTHY, REASON_RESET_REQUIRED, message, fatal=True)
    if action in _REBOOT_ACTIONS:
        return _Finding(HealthState.UNHEALTHY, REASON_REBOOT_REQUIRED, message, fatal=True)
    if action == pynvml.NVML_GPU_RECOVERY_ACTION_RECOVER_IMEX_DOMAIN:
        return _Finding(HealthState.UNHEALTHY, REASON_RECOVER_IMEX, message)
    # DRAIN_P2P, and any action newer than this table: keep new work off, leave running pods.
    return _Finding(HealthState.UNHEALTHY, REASON_DRAIN_P2P if action ==
                    pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_P2P else f"RecoveryAction{action}",
                    message)


def _held_finding(xid: int, settings: GpuHealthSettings) -> _Finding:
    if settings.xid_class(xid) == XidClass.REBOOT:
        needs = "needs a node reboot; held until the node reboots"
    else:
        needs = ("needs a GPU reset; held until NVML's recovery action returns to None or the "
                 "node reboots")
    return _Finding(HealthState.UNHEALTHY, xid_reason(xid), f"{describe_xid(xid)}; {needs}",
                    fatal=True)


def _unclassified_finding(xid: int, settings: GpuHealthSettings) -> _Finding:
    return _Finding(settings.unclassified_xid_state, xid_reason(xid),
                    f"{describe_xid(xid)}, not in the XID catalogue of this agent; clears "
                    f"{settings.xid_quiet_window_s:g}s after the last one")


def _worst(findings: Sequence[_Finding]) -> _Finding:
    """The most serious finding; among equals the first, so reasons stay stable poll to poll."""
    worst = _HEALTHY
    for finding in findings:
        if finding.severity > worst.severity:
            worst = finding
    return worst


def _verdict_severity(verdict: GpuVerdict) -> tuple[int, bool]:
    return _RANK[verdict.state], verdict.fatal
