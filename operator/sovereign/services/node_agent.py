"""The node agent's use case: poll NVML, judge every GPU, publish metrics, mark the node.

One loop (``NodeAgent.run``): wait for XID events until the next poll is due (an XID brings the
poll forward, after a short settle so a storm is one poll), read every GPU, assess each with
``policy.gpu_health`` (which keeps the hysteresis), refresh the Prometheus collector, emit an
Event for every GPU whose verdict changed, and, when the result changed, make the node carry it
through ``kube.nodes.publish_gpu_health``, which writes only what differs from the live node.

On start the agent reads its node's ``sovereign.ai/gpu-health`` annotation, so a restarted agent
keeps holding a GPU whose XID needs a reset or a reboot (and its reset count and the device
plugin's view) instead of forgetting it; if the node's boot ID differs from the one in the
annotation, the node rebooted, which is the recovery those faults wait for: they are cleared.

Between changes the agent makes no API call at all, except a resync every
``resync_interval_s`` that compares the live node with the health and repairs what differs.

Called by ``cli/agent.py`` (``sovereign agent``) and the integration tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import yaml
from kubernetes import client
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sovereign.kube.nodes import (
    Condition,
    GpuHealthRecord,
    GpuNodeMarks,
    GpuRecord,
    NodeError,
    PublishResult,
    Taint,
    emit_node_event,
    publish_gpu_health,
    read_node,
)
from sovereign.nvml.reader import NvmlReader, NvmlUnavailable
from sovereign.nvml.readings import GpuIdentity, GpuReading, XidEvent
from sovereign.services.gpu_metrics import GpuMetrics
from sovereign.policy.gpu_health import (
    REASON_NVML_UNAVAILABLE,
    GpuHealthSettings,
    GpuMemory,
    GpuVerdict,
    HealthState,
    NodeGpuHealth,
    assess_gpu,
    describe_xid,
    restore_memory,
    summarize_node,
    unknown_node,
)

log = logging.getLogger(__name__)

# Event reasons, by the state a GPU moved to.
EVENT_REASONS = {HealthState.UNHEALTHY: "GPUUnhealthy", HealthState.DEGRADED: "GPUDegraded",
                 HealthState.HEALTHY: "GPURecovered"}
EVENT_NVML_UNAVAILABLE = "NVMLUnavailable"
EVENT_NVML_BACK = "NVMLAvailable"
EVENT_REBOOTED = "GPUFaultsClearedByReboot"


class AgentSettings(BaseModel):
    """The agent's configuration file (YAML; every field optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    poll_interval_s: float = Field(default=10, gt=0, description="Seconds between NVML polls.")
    xid_settle_s: float = Field(
        default=1, ge=0,
        description="After an XID event, wait this long for more before polling, so a storm of "
                    "XIDs is one poll and at most one node write.")
    resync_interval_s: float = Field(
        default=300, gt=0,
        description="How often the agent compares the live node with its health even when the "
                    "health has not changed, to repair marks someone else removed. Between "
                    "resyncs an unchanged health costs no API call at all.")
    fatal_taint_effect: Literal["NoSchedule", "NoExecute"] = Field(
        default="NoSchedule",
        description="Taint effect for fatal faults; NoExecute also evicts running pods. Other "
                    "unhealthy faults always taint NoSchedule.")
    health: GpuHealthSettings = Field(default_factory=GpuHealthSettings)

    @classmethod
    def from_file(cls, path: str | Path) -> AgentSettings:
        """Load a YAML file; a bad file raises ValueError naming the file and the field."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
            return cls.model_validate(data)
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read agent config {path}: {err}") from err
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in err.errors())
            raise ValueError(f"agent config {path} is invalid: {problems}") from err


class NodeAgent:
    """Watches the GPUs of one node and keeps that node's GPU health marks up to date."""

    def __init__(self, *, reader: NvmlReader, api: client.ApiClient, node_name: str,
                 settings: AgentSettings, metrics: GpuMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._reader = reader
        self._api = api
        self._node = node_name
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._memories: dict[int, GpuMemory] = {}
        self._to_restore: dict[str, GpuRecord] = {}
        self._boot_id = ""
        self._rebooted = False
        self._nvml_down = False
        self._published: GpuNodeMarks | None = None
        self._synced_at = float("-inf")

    def start(self) -> None:
        """Check the node is there and readable, and pick up the verdicts it already carries.

        Raises ``kube.nodes.NodeError`` (not found, forbidden, unreachable) for the caller to report.
        """
        node = read_node(self._api, name=self._node)
        self._boot_id = ((node.get("status") or {}).get("nodeInfo") or {}).get("bootID") or ""
        record = GpuHealthRecord.from_node(node)
        self._rebooted = bool(record and record.boot_id and self._boot_id
                              and record.boot_id != self._boot_id)
        self._to_restore = {g.uuid: g for g in (record.gpus if record else ()) if g.uuid}
        held = [g for g in self._to_restore.values() if g.held_xids or g.state != HealthState.HEALTHY]
        if self._rebooted and held:
            self._event(EVENT_REBOOTED, "the node rebooted (boot ID changed): faults held until "
                        "a reboot are cleared for GPUs " + ", ".join(str(g.index) for g in held),
                        warning=False)

    def run(self, *, stop: threading.Event) -> None:
        """Poll until ``stop`` is set."""
        self.start()
        while not stop.is_set():
            self.poll(xids=self._collect_xids(stop))

    def poll(self, *, xids: Sequence[XidEvent]) -> NodeGpuHealth:
        """One pass: read, assess, publish metrics, then events and node marks if they changed."""
        try:
            readings = self._reader.read()
        except NvmlUnavailable as err:
            return self._nvml_unavailable(err)
        if self._nvml_down:
            self._nvml_down = False
            self._event(EVENT_NVML_BACK, "NVML answers again", warning=False)
        now = self._clock()
        if xids:
            log.info("XID events: %s", _describe_xids(xids))
        self._metrics.count_xids(xids, self._reader.identities)
        verdicts = []
        for reading in readings:
            index = reading.identity.index
            before = self._memory(reading, now)
            verdict, self._memories[index] = assess_gpu(
                reading, xids=[e.xid for e in xids if e.gpu_index in (index, None)],
                memory=before, now=now, settings=self._settings.health)
            verdicts.append(verdict)
            self._report_change(reading.identity, before.verdict if before else None, verdict)
        health = summarize_node(verdicts)
        self._metrics.observe(readings=readings, verdicts=verdicts,
                              driver_version=self._reader.driver_version)
        self._publish(self._marks(health, known=True))
        return health

    # -- internals ------------------------------------------------------------------------------

    def _collect_xids(self, stop: threading.Event) -> list[XidEvent]:
        """XID events until the next poll is due; one brings the poll forward by the settle time."""
        deadline = self._clock() + self._settings.poll_interval_s
        events: list[XidEvent] = []
        while not stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            # Short waits so a stop request is noticed within half a second.
            arrived = self._reader.wait_for_xids(timeout_s=min(remaining, 0.5))
            if arrived:
                events += arrived
                deadline = min(deadline, self._clock() + self._settings.xid_settle_s)
        return events

    def _memory(self, reading: GpuReading, now: float) -> GpuMemory | None:
        index = reading.identity.index
        if index not in self._memories and reading.identity.uuid in self._to_restore:
            record = self._to_restore.pop(reading.identity.uuid)
            restored = restore_memory(GpuVerdict(
                index=index, uuid=record.uuid, state=HealthState(record.state),
                reason=record.reason, message=record.message, fatal=record.fatal,
                held_xids=record.held_xids, resets=record.resets,
                device_plugin_xid=record.device_plugin_xid),
                now=now, rebooted=self._rebooted, settings=self._settings.health)
            if restored is not None:
                self._memories[index] = restored
        return self._memories.get(index)

    def _report_change(self, identity: GpuIdentity, before: GpuVerdict | None,
                       after: GpuVerdict) -> None:
        if before is None and after.ok:
            return
        if before is not None and (before.state, before.reason) == (after.state, after.reason):
            return
        detail = f"{after.state} ({after.reason}): {after.message}" if not after.ok else (
            f"healthy again after {before.reason}" if before else "healthy")
        message = f"GPU {identity.index} ({identity.uuid}, {identity.name}) {detail}"
        log.info("%s", message)
        self._event(EVENT_REASONS[after.state], message, warning=not after.ok)

    def _nvml_unavailable(self, err: NvmlUnavailable) -> NodeGpuHealth:
        log.warning("%s", err)
        self._metrics.nvml_down()
        if not self._nvml_down:
            self._nvml_down = True
            self._event(EVENT_NVML_UNAVAILABLE, str(err), warning=True)
        health = unknown_node(reason=REASON_NVML_UNAVAILABLE,
                              message=f"NVML is unavailable: {err.nvml_error}")
        self._publish(self._marks(health, known=False))
        return health

    def _marks(self, health: NodeGpuHealth, *, known: bool) -> GpuNodeMarks:
        taint = None
        if health.taint_reason:
            effect = self._settings.fatal_taint_effect if health.fatal else "NoSchedule"
            taint = Taint(value=health.taint_reason, effect=effect)
        record = GpuHealthRecord(
            state=health.state, healthy=health.healthy_gpus, total=len(health.gpus),
            gpus=tuple(GpuRecord(index=g.index, uuid=g.uuid, state=g.state, reason=g.reason,
                                 message=g.message, fatal=g.fatal, held_xids=g.held_xids,
                                 resets=g.resets, device_plugin_xid=g.device_plugin_xid)
                       for g in health.gpus),
            boot_id=self._boot_id)
        return GpuNodeMarks(
            condition=Condition(status=health.condition_status, reason=health.reason,
                                message=health.message),
            label=health.state, record=record if known else None, taint=taint, known=known)

    def _publish(self, marks: GpuNodeMarks) -> None:
        now = self._clock()
        if marks == self._published and now - self._synced_at < self._settings.resync_interval_s:
            self._metrics.count_poll(PublishResult(metadata_written=False, status_written=False))
            return
        try:
            result = publish_gpu_health(self._api, node_name=self._node, marks=marks)
        except NodeError as err:
            # Nothing is remembered as published, so the next poll tries again.
            log.warning("%s", err)
            self._published = None
            self._metrics.count_poll(None)
            return
        self._published, self._synced_at = marks, now
        self._metrics.count_poll(result)

    def _event(self, reason: str, message: str, *, warning: bool) -> None:
        try:
            emit_node_event(self._api, node_name=self._node, reason=reason, message=message,
                            warning=warning)
        except NodeError as err:
            log.warning("could not record event %s: %s", reason, err)


def _describe_xids(events: Sequence[XidEvent]) -> str:
    """One short line for a batch, however large: a storm is counted, not listed."""
    counts = Counter((e.xid, "all" if e.gpu_index is None else str(e.gpu_index)) for e in events)
    return ", ".join(f"{describe_xid(xid)} x{count} on GPU {gpu}"
                     for (xid, gpu), count in sorted(counts.items()))
