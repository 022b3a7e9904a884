"""The node agent's use case: poll NVML, judge every GPU, publish metrics, mark the node.

One loop (``NodeAgent.run``): wait for XID events until the next poll is due (an XID brings the
poll forward, after a short settle so a storm is one poll), read every GPU, assess each with
``policy.gpu_health`` (which keeps the hysteresis), refresh the Prometheus collector, emit an
Event for every GPU whose verdict changed, and, when the result changed, make the node carry it
through ``kube.nodes.publish_gpu_health``, which writes only what differs from the live node.

On start the agent reads its node's ``sovereign.ai/gpu-health`` annotation, so a restarted agent
keeps a GPU that was down for an XID down for a full quiet window instead of forgetting it.

Between changes the agent makes no API call at all, except a resync every
``resync_interval_s`` that compares the live node with the health and repairs what differs.

Called by ``cli/agent.py`` (``sovereign agent``) and the integration tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import yaml
from kubernetes import client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
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
        self._nvml_down = False
        self._published: GpuNodeMarks | None = None
        self._synced_at = float("-inf")

    def start(self) -> None:
        """Check the node is there and readable, and pick up the verdicts it already carries.

        Raises ``kube.nodes.NodeError`` (not found, forbidden, unreachable) for the caller to report.
        """
        record = GpuHealthRecord.from_node(read_node(self._api, name=self._node))
        self._to_restore = {g.uuid: g for g in (record.gpus if record else ())
                            if g.uuid and g.state != HealthState.HEALTHY}

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
        self._metrics.observe(readings=readings, verdicts=verdicts)
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
            self._memories[index] = restore_memory(GpuVerdict(
                index=index, uuid=record.uuid, state=HealthState(record.state),
                reason=record.reason, message=record.message, fatal=record.fatal), now=now)
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
                                 message=g.message, fatal=g.fatal) for g in health.gpus))
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


# -- metrics --------------------------------------------------------------------------------------

# dcgm-exporter's label set, so existing GPU dashboards and alerts work unchanged.
DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")

_Reading = Callable[[GpuReading], float | int | bool | None]


def _rows(attribute: str) -> _Reading:
    return lambda r: getattr(r.remapped_rows, attribute) if r.remapped_rows else None


def _pages(attribute: str) -> _Reading:
    return lambda r: getattr(r.retired_pages, attribute) if r.retired_pages else None


def _nvlink(attribute: str) -> _Reading:
    return lambda r: getattr(r.nvlink, attribute) if r.nvlink else None


# (DCGM field name, help, reading). Every family is exposed as a gauge under the exact DCGM name:
# dcgm-exporter declares some of them counters, but the Python client would rename a counter to
# <name>_total and break the queries dashboards already have.
DCGM_FIELDS: tuple[tuple[str, str, _Reading], ...] = (
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda r: r.temperature_c),
    ("DCGM_FI_DEV_SLOWDOWN_TEMP", "Slowdown temperature threshold (in C).",
     lambda r: r.slowdown_temp_c),
    ("DCGM_FI_DEV_SHUTDOWN_TEMP", "Shutdown temperature threshold (in C).",
     lambda r: r.shutdown_temp_c),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda r: r.power_usage_w),
    ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Power limit the driver enforces (in W).",
     lambda r: r.power_limit_w),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda r: r.gpu_util_pct),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", lambda r: r.mem_copy_util_pct),
    ("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory total (in MiB).", lambda r: r.fb_total_mib),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", lambda r: r.fb_used_mib),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", lambda r: r.fb_free_mib),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.",
     lambda r: r.ecc_corrected_volatile),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.",
     lambda r: r.ecc_uncorrected_volatile),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "Total number of single-bit persistent ECC errors.",
     lambda r: r.ecc_corrected_aggregate),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "Total number of double-bit persistent ECC errors.",
     lambda r: r.ecc_uncorrected_aggregate),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors",
     _rows("correctable")),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
     "Number of remapped rows for uncorrectable errors", _rows("uncorrectable")),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "Whether remapping of rows is pending (needs a reset)",
     _rows("pending")),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", _rows("failure")),
    ("DCGM_FI_DEV_RETIRED_SBE", "Total number of retired pages due to single-bit errors.",
     _pages("single_bit")),
    ("DCGM_FI_DEV_RETIRED_DBE", "Total number of retired pages due to double-bit errors.",
     _pages("double_bit")),
    ("DCGM_FI_DEV_RETIRED_PENDING", "Whether pages are pending retirement.", _pages("pending")),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "Current clock event (throttle) reasons, NVML bitmask.",
     lambda r: r.clock_event_reasons),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.",
     lambda r: r.pcie_replay_count),
    ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
     "Total number of NVLink flow-control CRC errors.", _nvlink("crc_flit")),
    ("DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "Total number of NVLink data CRC errors.",
     _nvlink("crc_data")),
    ("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "Total number of NVLink retries.",
     _nvlink("replay")),
    ("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "Total number of NVLink recovery errors.",
     _nvlink("recovery")),
    ("DCGM_FI_DEV_MIG_MODE", "MIG mode (1 enabled, 0 disabled).", lambda r: r.mig_enabled),
)
_HEALTH_STATES = (HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNHEALTHY)


class GpuMetrics(Collector):
    """The agent's Prometheus collector: dcgm-exporter names plus ``sovereign_gpu_*``.

    Updated by the poll loop, read by the metrics HTTP thread; snapshots are swapped under a lock.
    """

    def __init__(self, *, hostname: str) -> None:
        self._hostname = hostname
        self._lock = threading.Lock()
        self._readings: tuple[GpuReading, ...] = ()
        self._verdicts: tuple[GpuVerdict, ...] = ()
        self._xids: Counter[tuple[int, str, int]] = Counter()
        self._last_xid: dict[int, int] = {}
        self._nvml_up = 0
        self._polls = 0
        self._writes: Counter[str] = Counter()

    def observe(self, *, readings: Sequence[GpuReading], verdicts: Sequence[GpuVerdict]) -> None:
        with self._lock:
            self._readings, self._verdicts = tuple(readings), tuple(verdicts)
            self._nvml_up = 1

    def nvml_down(self) -> None:
        with self._lock:
            self._readings, self._verdicts, self._nvml_up = (), (), 0

    def count_xids(self, events: Sequence[XidEvent], identities: Sequence[GpuIdentity]) -> None:
        with self._lock:
            for event in events:
                for identity in identities:
                    if event.gpu_index in (identity.index, None):
                        self._xids[(identity.index, identity.uuid, event.xid)] += 1
                        self._last_xid[identity.index] = event.xid

    def count_poll(self, result: PublishResult | None) -> None:
        """A finished poll and the node writes it made (None: the node could not be written)."""
        with self._lock:
            self._polls += 1
            if result is not None:
                self._writes["metadata"] += int(result.metadata_written)
                self._writes["status"] += int(result.status_written)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            readings, verdicts = self._readings, self._verdicts
            xids, last_xid = dict(self._xids), dict(self._last_xid)
            nvml_up, polls, writes = self._nvml_up, self._polls, dict(self._writes)
        labels = {r.identity.index: self._labels(r.identity) for r in readings}
        for name, documentation, value_of in DCGM_FIELDS:
            family = GaugeMetricFamily(name, documentation, labels=DCGM_LABELS)
            for reading in readings:
                value = value_of(reading)
                if value is not None:  # NotSupported: no sample, as dcgm-exporter does
                    family.add_metric(labels[reading.identity.index], float(value))
            yield family
        xid_gauge = GaugeMetricFamily("DCGM_FI_DEV_XID_ERRORS",
                                      "Value of the last XID error encountered.",
                                      labels=DCGM_LABELS)
        for reading in readings:
            xid_gauge.add_metric(labels[reading.identity.index],
                                 last_xid.get(reading.identity.index, 0))
        yield xid_gauge
        health = GaugeMetricFamily("sovereign_gpu_health",
                                   "1 for the GPU's current health state, 0 for the others.",
                                   labels=("gpu", "UUID", "state"))
        for verdict in verdicts:
            for state in _HEALTH_STATES:
                health.add_metric([str(verdict.index), verdict.uuid, state],
                                  1 if verdict.state == state else 0)
        yield health
        xid_total = CounterMetricFamily("sovereign_gpu_xid",
                                        "XID events seen since the agent started, by code.",
                                        labels=("gpu", "UUID", "xid"))
        for (index, uuid, xid), count in sorted(xids.items()):
            xid_total.add_metric([str(index), uuid, str(xid)], count)
        yield xid_total
        yield GaugeMetricFamily("sovereign_gpu_agent_nvml_up",
                                "1 if the last NVML poll succeeded, else 0.", value=nvml_up)
        yield CounterMetricFamily("sovereign_gpu_agent_polls", "Polls the agent has finished.",
                                  value=polls)
        node_writes = CounterMetricFamily("sovereign_gpu_agent_node_writes",
                                          "Patches of the agent's node, by part; a steady node "
                                          "costs none.", labels=("part",))
        for part in ("metadata", "status"):
            node_writes.add_metric([part], writes.get(part, 0))
        yield node_writes

    def _labels(self, identity: GpuIdentity) -> list[str]:
        return [str(identity.index), identity.uuid, identity.pci_bus_id, identity.device,
                identity.name, self._hostname]


def _describe_xids(events: Sequence[XidEvent]) -> str:
    """One short line for a batch, however large: a storm is counted, not listed."""
    counts = Counter((e.xid, "all" if e.gpu_index is None else str(e.gpu_index)) for e in events)
    return ", ".join(f"{describe_xid(xid)} x{count} on GPU {gpu}"
                     for (xid, gpu), count in sorted(counts.items()))
