"""What one NVML poll says about one GPU, as plain frozen data.

Produced by ``nvml.reader.NvmlReader`` (from real NVML or the scripted fake) and read by the
pure health rules in ``policy.gpu_health`` and by the node agent's metrics. This module does no
I/O and imports nothing from pynvml, so the policy layer can depend on it.

A field is ``None`` when the GPU does not support that reading (``NVMLError_NotSupported``);
absence never means "unhealthy" by itself. ``lost`` is the one reading that does: the driver
answered ``NVMLError_GpuIsLost`` and every other field is then ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuIdentity:
    """Who a GPU is: read once when NVML is opened, so a GPU that is lost later keeps its name."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    minor_number: int | None

    @property
    def device(self) -> str:
        """dcgm-exporter's ``device`` label: ``nvidia<NVML index>`` (it formats the GPU index,
        not the /dev minor number, which can differ)."""
        return f"nvidia{self.index}"


@dataclass(frozen=True)
class RemappedRows:
    """Row remapper state (Ampere and newer): rows swapped for spares, and whether a reset is due."""

    correctable: int
    uncorrectable: int
    pending: bool
    failure: bool


@dataclass(frozen=True)
class RetiredPages:
    """Dynamic page retirement (Volta and older; Ampere+ answer NotSupported and remap rows)."""

    single_bit: int
    double_bit: int
    pending: bool


@dataclass(frozen=True)
class NvlinkErrors:
    """NVLink data-link error counters, summed over the GPU's active links."""

    active_links: int
    crc_flit: int | None
    crc_data: int | None
    replay: int | None
    recovery: int | None


@dataclass(frozen=True)
class GpuReading:
    """One poll of one GPU. Units: Celsius, watts, percent, MiB, MHz, millijoules."""

    identity: GpuIdentity
    lost: bool = False
    temperature_c: int | None = None
    memory_temp_c: int | None = None
    slowdown_temp_c: int | None = None
    shutdown_temp_c: int | None = None
    power_usage_w: float | None = None
    power_limit_w: float | None = None
    gpu_util_pct: int | None = None
    mem_copy_util_pct: int | None = None
    enc_util_pct: int | None = None
    dec_util_pct: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    total_energy_mj: int | None = None
    fb_total_mib: int | None = None
    fb_used_mib: int | None = None
    fb_free_mib: int | None = None
    fb_reserved_mib: int | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    remapped_rows: RemappedRows | None = None
    retired_pages: RetiredPages | None = None
    clock_event_reasons: int | None = None
    pcie_replay_count: int | None = None
    nvlink: NvlinkErrors | None = None
    mig_enabled: bool | None = None
    # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (an nvmlDeviceGpuRecoveryAction_t value): what the
    # driver asks for before the GPU is fit again; None on drivers without the field.
    recovery_action: int | None = None
    # Readings that failed for a reason other than NotSupported/GpuIsLost, as "field: error",
    # so the agent can log them; they are absent above and do not affect health.
    errors: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class XidEvent:
    """One XID critical-error event from the NVML event set.

    ``gpu_index`` is None when NVML could not say which GPU raised it (the driver then reports
    the event for the whole system); the agent applies such an event to every GPU.
    """

    xid: int
    gpu_index: int | None
