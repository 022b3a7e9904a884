"""The node agent's Prometheus metrics, exposed as dcgm-exporter exposes them, and their server.

``GpuMetrics`` holds the latest poll (the agent's loop writes, the HTTP thread reads, swapped
under a lock) and writes the Prometheus text format itself. It does not go through
``prometheus_client``'s collectors because that library renames every counter to ``<name>_total``
in the text format, and dcgm-exporter's counters (``DCGM_FI_DEV_PCIE_REPLAY_COUNTER``,
``DCGM_FI_DEV_ECC_DBE_VOL_TOTAL``, ...) carry no such suffix: to keep ``rate()`` working on the
exact names GPU dashboards already query, the names, metric types, HELP texts and labels follow
dcgm-exporter 4.5.3-4.8.2 (``etc/default-counters.csv`` and its exposition template):

    DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-...",pci_bus_id="00000000:18:00.0",device="nvidia0",
                         modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",
                         DCGM_FI_DRIVER_VERSION="580.95.05"} 34

``DCGM_FI_DEV_XID_ERRORS`` (a gauge of the last XID) adds ``err_code`` and ``err_msg``. Fields
dcgm-exporter has but NVML alone cannot give (DCP profiling, NVLink bandwidth, vGPU licences) are
left out rather than faked; fields it does
not list in its files (thresholds, framebuffer total, clock-event reasons, MIG mode) are DCGM
fields exposed as gauges. ``sovereign_gpu_*`` are this agent's own.

Used by ``services.node_agent`` (which records into it) and ``cli/agent.py`` (``serve_metrics``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from prometheus_client.utils import floatToGoString

from sovereign.kube.nodes import PublishResult
from sovereign.nvml.readings import GpuIdentity, GpuReading, XidEvent
from sovereign.policy.gpu_health import XID_DESCRIPTIONS, GpuVerdict, HealthState

#: dcgm-exporter's labels on every per-GPU series, in its order (no MIG labels: the agent
#: reads whole GPUs), then the static-field label its default counters file turns on.
DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")
DRIVER_VERSION_LABEL = "DCGM_FI_DRIVER_VERSION"
XID_LABELS = ("err_code", "err_msg")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricType = Literal["gauge", "counter"]
_Reading = Callable[[GpuReading], float | int | bool | None]


@dataclass(frozen=True)
class DcgmField:
    """One DCGM field as the agent exposes it."""

    name: str
    type: MetricType
    help: str
    value: _Reading


def _rows(attribute: str) -> _Reading:
    return lambda r: getattr(r.remapped_rows, attribute) if r.remapped_rows else None


def _pages(attribute: str) -> _Reading:
    return lambda r: getattr(r.retired_pages, attribute) if r.retired_pages else None


def _nvlink(attribute: str) -> _Reading:
    return lambda r: getattr(r.nvlink, attribute) if r.nvlink else None


DCGM_FIELDS: tuple[DcgmField, ...] = (
    DcgmField("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).",
              lambda r: r.sm_clock_mhz),
    DcgmField("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).",
              lambda r: r.mem_clock_mhz),
    DcgmField("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).",
              lambda r: r.memory_temp_c),
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).",
              lambda r: r.temperature_c),
    DcgmField("DCGM_FI_DEV_SLOWDOWN_TEMP", "gauge", "Slowdown temperature threshold (in C).",
              lambda r: r.slowdown_temp_c),
    DcgmField("DCGM_FI_DEV_SHUTDOWN_TEMP", "gauge", "Shutdown temperature threshold (in C).",
              lambda r: r.shutdown_temp_c),
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda r: r.power_usage_w),
    DcgmField("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
              "Total energy consumption since boot (in mJ).", lambda r: r.total_energy_mj),
    DcgmField("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge",
              "Power limit the driver enforces (in W).", lambda r: r.power_limit_w),
    DcgmField("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).",
              lambda r: r.gpu_util_pct),
    DcgmField("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).",
              lambda r: r.mem_copy_util_pct),
    DcgmField("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).",
              lambda r: r.enc_util_pct),
    DcgmField("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).",
              lambda r: r.dec_util_pct),
    DcgmField("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).",
              lambda r: r.fb_total_mib),
    DcgmField("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
              lambda r: r.fb_free_mib),
    DcgmField("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
              lambda r: r.fb_used_mib),
    DcgmField("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).",
              lambda r: r.fb_reserved_mib),
    DcgmField("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
              "Total number of single-bit volatile ECC errors.",
              lambda r: r.ecc_corrected_volatile),
    DcgmField("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
              "Total number of double-bit volatile ECC errors.",
              lambda r: r.ecc_uncorrected_volatile),
    DcgmField("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
              "Total number of single-bit persistent ECC errors.",
              lambda r: r.ecc_corrected_aggregate),
    DcgmField("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
              "Total number of double-bit persistent ECC errors.",
              lambda r: r.ecc_uncorrected_aggregate),
    DcgmField("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
              "Number of remapped rows for uncorrectable errors", _rows("uncorrectable")),
    DcgmField("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
              "Number of remapped rows for correctable errors", _rows("correctable")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed",
              _rows("failure")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge",
              "Whether remapping of rows is pending (needs a reset)", _rows("pending")),
    DcgmField("DCGM_FI_DEV_RETIRED_SBE", "counter",
              "Total number of retired pages due to single-bit errors.", _pages("single_bit")),
    DcgmField("DCGM_FI_DEV_RETIRED_DBE", "counter",
              "Total number of retired pages due to double-bit errors.", _pages("double_bit")),
    DcgmField("DCGM_FI_DEV_RETIRED_PENDING", "counter",
              "Total number of pages pending retirement.", _pages("pending")),
    DcgmField("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge",
              "Current clock event (throttle) reasons, NVML bitmask.",
              lambda r: r.clock_event_reasons),
    DcgmField("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
              lambda r: r.pcie_replay_count),
    DcgmField("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink flow-control CRC errors.", _nvlink("crc_flit")),
    DcgmField("DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink data CRC errors.", _nvlink("crc_data")),
    DcgmField("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink retries.", _nvlink("replay")),
    DcgmField("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "counter",
              "Total number of NVLink recovery errors.", _nvlink("recovery")),
    DcgmField("DCGM_FI_DEV_MIG_MODE", "gauge", "MIG mode (1 enabled, 0 disabled).",
              lambda r: r.mig_enabled),
)
XID_FIELD = DcgmField("DCGM_FI_DEV_XID_ERRORS", "gauge",
                      "Value of the last XID error encountered.", lambda r: None)
_HEALTH_STATES = (HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNHEALTHY)


class GpuMetrics:
    """The agent's metrics: the last poll's readings and verdicts, and counts since start."""

    def __init__(self, *, hostname: str) -> None:
        self._hostname = hostname
        self._lock = threading.Lock()
        self._readings: tuple[GpuReading, ...] = ()
        self._verdicts: tuple[GpuVerdict, ...] = ()
        self._driver_version = ""
        self._xids: Counter[tuple[int, str, int]] = Counter()
        self._last_xid: dict[int, int] = {}
        self._nvml_up = 0
        self._polls = 0
        self._writes: Counter[str] = Counter()

    def observe(self, *, readings: Sequence[GpuReading], verdicts: Sequence[GpuVerdict],
                driver_version: str = "") -> None:
        with self._lock:
            self._readings, self._verdicts = tuple(readings), tuple(verdicts)
            self._driver_version = driver_version
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

    def exposition(self) -> str:
        """Everything, in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            readings, verdicts = self._readings, self._verdicts
            driver, xids, last_xid = self._driver_version, dict(self._xids), dict(self._last_xid)
            nvml_up, polls, writes = self._nvml_up, self._polls, dict(self._writes)
        lines: list[str] = []
        for dcgm in DCGM_FIELDS:
            samples = []
            for reading in readings:
                value = dcgm.value(reading)
                if value is not None:  # NotSupported: no sample, as dcgm-exporter does
                    samples.append((self._labels(reading.identity, driver), value))
            lines += _family(dcgm.name, dcgm.type, dcgm.help, samples)
        xid_samples = []
        for reading in readings:
            code = last_xid.get(reading.identity.index, 0)
            xid_samples.append(({**self._labels(reading.identity, driver),
                                 "err_code": str(code), "err_msg": _xid_text(code)}, code))
        lines += _family(XID_FIELD.name, XID_FIELD.type, XID_FIELD.help, xid_samples)
        lines += _family("sovereign_gpu_health", "gauge",
                         "1 for the GPU's current health state, 0 for the others.",
                         [({"gpu": str(v.index), "UUID": v.uuid, "state": state},
                           int(v.state == state)) for v in verdicts for state in _HEALTH_STATES])
        lines += _family("sovereign_gpu_xid_total", "counter",
                         "XID events seen since the agent started, by code.",
                         [({"gpu": str(index), "UUID": uuid, "xid": str(xid)}, count)
                          for (index, uuid, xid), count in sorted(xids.items())])
        lines += _family("sovereign_gpu_agent_nvml_up", "gauge",
                         "1 if the last NVML poll succeeded, else 0.", [({}, nvml_up)])
        lines += _family("sovereign_gpu_agent_polls_total", "counter",
                         "Polls the agent has finished.", [({}, polls)])
        lines += _family("sovereign_gpu_agent_node_writes_total", "counter",
                         "Patches of the agent's node, by part; a steady node costs none.",
                         [({"part": part}, writes.get(part, 0)) for part in ("metadata", "status")])
        return "".join(line + "\n" for line in lines)

    def _labels(self, identity: GpuIdentity, driver: str) -> dict[str, str]:
        labels = dict(zip(DCGM_LABELS, (str(identity.index), identity.uuid, identity.pci_bus_id,
                                        identity.device, identity.name, self._hostname),
                          strict=True))
        if not self._hostname:  # dcgm-exporter leaves the label out rather than empty
            del labels["Hostname"]
        labels[DRIVER_VERSION_LABEL] = driver
        return labels


def serve_metrics(*, metrics: GpuMetrics, address: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` on a daemon thread; the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = metrics.exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # a scrape every few seconds is not news

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _family(name: str, kind: MetricType, help_text: str,
            samples: Sequence[tuple[dict[str, str], float | int | bool]]) -> Iterator[str]:
    yield f"# HELP {name} {_escape_help(help_text)}"
    yield f"# TYPE {name} {kind}"
    for labels, value in samples:
        rendered = ",".join(f'{key}="{_escape_value(text)}"' for key, text in labels.items())
        yield f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}"


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool | int):
        return str(int(value))
    return floatToGoString(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _xid_text(code: int) -> str:
    if code == 0:
        return "No Error"
    return XID_DESCRIPTIONS.get(code, "Unknown Error")
