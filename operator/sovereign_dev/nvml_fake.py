"""A scripted NVML for machines without a GPU: tests, and simulated GPU nodes in the dev cluster.

``FakeNvml`` implements ``nvml.reader.NvmlLibrary`` (the pynvml calls the agent makes) from a
*scenario file*, JSON or YAML, which it re-reads whenever the file changes. So faults can be
scripted from outside a running agent: ``sovereign agent --fake-nvml PATH`` reads the file, and
anything (a test, ``sovereign dev fault``) rewrites it with the functions at the bottom:

    write_scenario(path, healthy_node(seed="gpu-mec1-0"))   # eight healthy H100s
    inject_xid(path, gpu=3, xid=79)                         # one XID 79 event on GPU 3 (and,
                                                            # as the driver does, a recovery action)
    inject_xid(path, gpu=0, xid=13, count=500)              # an XID storm
    set_fault(path, gpu=1, fault="ecc-dbe")                 # a preset from FAULTS
    update_gpu(path, gpu=2, temperature_c=88)               # any reading, by field name
    set_driver(path, loaded=False)                          # NVML fails as a whole
    clear_faults(path)                                      # every GPU reset: healthy, XIDs gone,
                                                            # recovery action back to None

Writes are atomic (temp file + rename), so the agent never reads half a file; an invalid file
written while the agent runs is logged and the last good scenario stays in force.

Fidelity to NVML: a reading set to null raises ``NVMLError_NotSupported``; ``lost: true`` makes
every call on that GPU raise ``NVMLError_GpuIsLost``; ``driver_loaded: false`` makes ``nvmlInit``
and every later call fail with ``NVMLError_DriverNotLoaded``; ``recovery_action`` is
``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`` through ``nvmlDeviceGetFieldValues`` (null: a driver
without the field, which answers that field NotSupported); an XID whose catalogue action is a
GPU reset or a reboot sets it as the driver does (XID 154 linkage), and a reset (``clear_faults``)
puts it back to None; XID events listed in the file before the agent registered for events are not delivered
(NVML reports only events that happen after registration), later ones once each, in order.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pynvml
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sovereign.policy.gpu_health import GpuHealthSettings

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_POLL_S = 0.05  # how often a blocked nvmlEventSetWait looks at the file again


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FakeRemappedRows(_Model):
    correctable: int = 0
    uncorrectable: int = 0
    pending: bool = False
    failure: bool = False


class FakeRetiredPages(_Model):
    single_bit: int = 0
    double_bit: int = 0
    pending: bool = False


class FakeNvlink(_Model):
    """NVLink of one GPU: ``links`` active links; the error counts are all reported on link 0."""

    links: int = 18
    crc_flit: int = 0
    crc_data: int = 0
    replay: int = 0
    recovery: int = 0


class FakeXid(_Model):
    id: str = Field(description="Unique per event; an event is delivered once per id.")
    xid: int


class FakeGpu(_Model):
    """One GPU's readings. Defaults describe a healthy, idle H100 SXM; null = NotSupported."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:00:00.0"
    minor_number: int | None = None
    lost: bool = False
    temperature_c: int | None = 34
    memory_temp_c: int | None = 30
    slowdown_temp_c: int | None = 89
    shutdown_temp_c: int | None = 92
    power_usage_w: float | None = 72.0
    power_limit_w: float | None = 700.0
    gpu_util_pct: int | None = 0
    mem_copy_util_pct: int | None = 0
    enc_util_pct: int | None = 0
    dec_util_pct: int | None = 0
    sm_clock_mhz: int | None = 1980
    mem_clock_mhz: int | None = 2619
    total_energy_mj: int | None = 1_000_000
    fb_total_mib: int | None = 81559
    fb_used_mib: int = 0
    # Reserved by the driver: NVML's v2 memory info only (v1 counts it as used).
    fb_reserved_mib: int | None = 0
    ecc_corrected_volatile: int | None = 0
    ecc_uncorrected_volatile: int | None = 0
    ecc_corrected_aggregate: int | None = 0
    ecc_uncorrected_aggregate: int | None = 0
    remapped_rows: FakeRemappedRows | None = Field(default_factory=FakeRemappedRows)
    # Ampere and newer retire no pages (they remap rows), so NVML answers NotSupported.
    retired_pages: FakeRetiredPages | None = None
    clock_event_reasons: int | None = 0
    pcie_replay_count: int | None = 0
    nvlink: FakeNvlink | None = Field(default_factory=FakeNvlink)
    mig_mode: bool | None = False
    recovery_action: int | None = pynvml.NVML_GPU_RECOVERY_ACTION_NONE
    xid_events_supported: bool = True
    xid_events: list[FakeXid] = Field(default_factory=list)


class FakeScenario(_Model):
    driver_loaded: bool = True
    driver_version: str = "580.95.05"
    gpus: list[FakeGpu] = Field(default_factory=list)


class FakeScenarioError(ValueError):
    """The scenario file is missing or invalid; the message names the file and the field."""


# Readings a fault changes; clear_faults() puts these back to the FakeGpu defaults.
FAULT_FIELDS = ("lost", "temperature_c", "ecc_uncorrected_volatile", "remapped_rows",
                "retired_pages", "clock_event_reasons", "xid_events", "recovery_action")

FaultName = Literal["ecc-dbe", "remap-pending", "remap-failure", "thermal-slowdown", "gpu-lost",
                    "reset-required", "reboot-required", "drain-p2p"]


def _ecc_dbe(gpu: FakeGpu) -> FakeGpu:
    return gpu.model_copy(update={
        "ecc_uncorrected_volatile": (gpu.ecc_uncorrected_volatile or 0) + 1,
        "ecc_uncorrected_aggregate": (gpu.ecc_uncorrected_aggregate or 0) + 1})


def _remap(gpu: FakeGpu, **flags: bool) -> FakeGpu:
    rows = gpu.remapped_rows or FakeRemappedRows()
    return gpu.model_copy(update={"remapped_rows": rows.model_copy(
        update={"uncorrectable": rows.uncorrectable + 1, **flags})})


def _thermal_slowdown(gpu: FakeGpu) -> FakeGpu:
    return gpu.model_copy(update={
        "temperature_c": gpu.slowdown_temp_c or 89,
        "clock_event_reasons": (gpu.clock_event_reasons or 0)
        | pynvml.nvmlClocksEventReasonHwThermalSlowdown})


FAULTS: dict[str, Callable[[FakeGpu], FakeGpu]] = {
    "ecc-dbe": _ecc_dbe,
    "remap-pending": lambda gpu: _remap(gpu, pending=True),
    "remap-failure": lambda gpu: _remap(gpu, failure=True),
    "thermal-slowdown": _thermal_slowdown,
    "gpu-lost": lambda gpu: gpu.model_copy(update={"lost": True}),
    "reset-required": lambda gpu: _recovery(gpu, pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET),
    "reboot-required": lambda gpu: _recovery(gpu, pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT),
    "drain-p2p": lambda gpu: _recovery(gpu, pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_P2P),
}


def _recovery(gpu: FakeGpu, action: int) -> FakeGpu:
    """The driver asks for ``action``, on a driver that has the field (else nothing changes)."""
    if gpu.recovery_action is None:
        return gpu
    return gpu.model_copy(update={"recovery_action": action})


def _xid_recovery(xid: int) -> int | None:
    """The recovery action a driver sets with an XID, after the catalogue's immediate action."""
    classes = GpuHealthSettings()
    if xid in classes.reset_xids:
        return pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET
    if xid in classes.reboot_xids:
        return pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT
    return None


# -- the NVML surface -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Handle:
    index: int


@dataclass(frozen=True)
class _PciInfo:
    busId: str


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int
    reserved: int = 0


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _FieldValueUnion:
    uiVal: int


@dataclass(frozen=True)
class _FieldValue:
    """One entry of nvmlDeviceGetFieldValues' answer (the parts of c_nvmlFieldValue_t read)."""

    fieldId: int
    nvmlReturn: int
    valueType: int = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    value: _FieldValueUnion = _FieldValueUnion(0)


@dataclass(frozen=True)
class _EventData:
    device: _Handle
    eventType: int
    eventData: int


class _EventSet:
    """One event set: which GPUs are registered and which event ids it has delivered."""

    def __init__(self) -> None:
        self.gpus: set[int] = set()
        self.delivered: set[str] = set()


def _not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def _supported(value: Any) -> Any:
    if value is None:
        raise _not_supported()
    return value


class FakeNvml:
    """Implements ``NvmlLibrary`` from the scenario at ``path``; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._scenario = load_scenario(self._path)
        self._stamp = self._stat()
        self._initialized = False

    @property
    def scenario(self) -> FakeScenario:
        self._refresh()
        return self._scenario

    # lifecycle
    def nvmlInit(self) -> None:
        self._refresh()
        if not self._scenario.driver_loaded:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self._initialized = True

    def nvmlShutdown(self) -> None:
        self._initialized = False

    # identity
    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self._gpus()):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _PciInfo:
        return _PciInfo(busId=self._gpu(handle).pci_bus_id)

    def nvmlDeviceGetMinorNumber(self, handle: _Handle) -> int:
        return _supported(self._gpu(handle).minor_number)

    # readings
    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        return _supported(self._gpu(handle).temperature_c)

    def nvmlDeviceGetTemperatureThreshold(self, handle: _Handle, threshold: int) -> int:
        gpu = self._gpu(handle)
        if threshold == pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            return _supported(gpu.slowdown_temp_c)
        if threshold == pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN:
            return _supported(gpu.shutdown_temp_c)
        raise _not_supported()

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return round(_supported(self._gpu(handle).power_usage_w) * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return round(_supported(self._gpu(handle).power_limit_w) * 1000)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:
        gpu = self._gpu(handle)
        return _Utilization(gpu=_supported(gpu.gpu_util_pct),
                            memory=_supported(gpu.mem_copy_util_pct))

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> _Memory:
        gpu = self._gpu(handle)
        total = _supported(gpu.fb_total_mib) * _MIB
        used = gpu.fb_used_mib * _MIB
        if version is None:
            return _Memory(total=total, free=total - used, used=used)
        reserved = _supported(gpu.fb_reserved_mib) * _MIB
        return _Memory(total=total, free=total - used, used=used - reserved, reserved=reserved)

    def nvmlDeviceGetClockInfo(self, handle: _Handle, type: int) -> int:  # noqa: A002
        gpu = self._gpu(handle)
        if type == pynvml.NVML_CLOCK_SM:
            return _supported(gpu.sm_clock_mhz)
        if type == pynvml.NVML_CLOCK_MEM:
            return _supported(gpu.mem_clock_mhz)
        raise _not_supported()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return _supported(self._gpu(handle).total_energy_mj)

    def nvmlDeviceGetEncoderUtilization(self, handle: _Handle) -> list[int]:
        return [_supported(self._gpu(handle).enc_util_pct), 167_000]

    def nvmlDeviceGetDecoderUtilization(self, handle: _Handle) -> list[int]:
        return [_supported(self._gpu(handle).dec_util_pct), 167_000]

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, errorType: int,
                                    counterType: int) -> int:
        gpu = self._gpu(handle)
        corrected = errorType == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
        volatile = counterType == pynvml.NVML_VOLATILE_ECC
        value = {(True, True): gpu.ecc_corrected_volatile,
                 (False, True): gpu.ecc_uncorrected_volatile,
                 (True, False): gpu.ecc_corrected_aggregate,
                 (False, False): gpu.ecc_uncorrected_aggregate}[(corrected, volatile)]
        return _supported(value)

    def nvmlDeviceGetRemappedRows(self, device: _Handle) -> tuple[int, int, int, int]:
        rows = _supported(self._gpu(device).remapped_rows)
        return rows.correctable, rows.uncorrectable, int(rows.pending), int(rows.failure)

    def nvmlDeviceGetRetiredPages(self, device: _Handle, sourceFilter: int) -> list[int]:
        pages = _supported(self._gpu(device).retired_pages)
        count = (pages.single_bit if sourceFilter
                 == pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
                 else pages.double_bit)
        return [0x1000 * (n + 1) for n in range(count)]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: _Handle) -> int:
        return int(_supported(self._gpu(device).retired_pages).pending)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return _supported(self._gpu(handle).clock_event_reasons)

    def nvmlDeviceGetPcieReplayCounter(self, handle: _Handle) -> int:
        return _supported(self._gpu(handle).pcie_replay_count)

    def nvmlDeviceGetNvLinkState(self, device: _Handle, link: int) -> int:
        nvlink = _supported(self._gpu(device).nvlink)
        if link >= nvlink.links:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 1

    def nvmlDeviceGetNvLinkErrorCounter(self, device: _Handle, link: int, counter: int) -> int:
        nvlink = _supported(self._gpu(device).nvlink)
        if link != 0:
            return 0
        return {pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT: nvlink.crc_flit,
                pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA: nvlink.crc_data,
                pynvml.NVML_NVLINK_ERROR_DL_REPLAY: nvlink.replay,
                pynvml.NVML_NVLINK_ERROR_DL_RECOVERY: nvlink.recovery}[counter]

    def nvmlDeviceGetMigMode(self, device: _Handle) -> list[int]:
        mode = int(_supported(self._gpu(device).mig_mode))
        return [mode, mode]

    def nvmlDeviceGetFieldValues(self, handle: _Handle, fieldIds: list[int]) -> list[_FieldValue]:
        gpu = self._gpu(handle)
        answers = []
        for field_id in fieldIds:
            value = {pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: gpu.recovery_action,
                     pynvml.NVML_FI_DEV_MEMORY_TEMP: gpu.memory_temp_c}.get(field_id)
            if value is None:
                answers.append(_FieldValue(field_id, pynvml.NVML_ERROR_NOT_SUPPORTED))
            else:
                answers.append(_FieldValue(field_id, pynvml.NVML_SUCCESS,
                                           value=_FieldValueUnion(value)))
        return answers

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_initialized()
        return self._scenario.driver_version

    # events
    def nvmlEventSetCreate(self) -> _EventSet:
        self._check_initialized()
        return _EventSet()

    def nvmlDeviceRegisterEvents(self, handle: _Handle, eventTypes: int,
                                 eventSet: _EventSet) -> None:
        gpu = self._gpu(handle)
        if not gpu.xid_events_supported:
            raise _not_supported()
        eventSet.gpus.add(handle.index)
        # Events from before registration are history, not news.
        eventSet.delivered.update(event.id for event in gpu.xid_events)

    def nvmlEventSetWait_v2(self, eventSet: _EventSet, timeoutms: int) -> _EventData:
        deadline = time.monotonic() + timeoutms / 1000
        while True:
            self._refresh()
            for index in sorted(eventSet.gpus):
                if index >= len(self._scenario.gpus):
                    continue
                for event in self._scenario.gpus[index].xid_events:
                    if event.id not in eventSet.delivered:
                        eventSet.delivered.add(event.id)
                        return _EventData(device=_Handle(index),
                                          eventType=pynvml.nvmlEventTypeXidCriticalError,
                                          eventData=event.xid)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            time.sleep(min(_POLL_S, remaining))

    def nvmlEventSetFree(self, eventSet: _EventSet) -> None:
        eventSet.gpus.clear()

    # internals
    def _check_initialized(self) -> None:
        if not self._initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpus(self) -> list[FakeGpu]:
        self._check_initialized()
        self._refresh()
        if not self._scenario.driver_loaded:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        return self._scenario.gpus

    def _gpu(self, handle: _Handle) -> FakeGpu:
        gpus = self._gpus()
        if not 0 <= handle.index < len(gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = gpus[handle.index]
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = self._path.stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._scenario = load_scenario(self._path)
        except FakeScenarioError as err:
            log.warning("%s; keeping the previous fake NVML scenario", err)


# -- scripting the scenario file from outside ------------------------------------------------------

def load_scenario(path: str | Path) -> FakeScenario:
    """Parse a scenario file (JSON or YAML); FakeScenarioError names the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise FakeScenarioError(
            f"fake NVML scenario {path} does not exist; create it with "
            "sovereign_dev.nvml_fake.write_scenario(path, healthy_node())") from err
    except yaml.YAMLError as err:
        raise FakeScenarioError(f"fake NVML scenario {path} is not valid JSON/YAML: {err}") from err
    try:
        return FakeScenario.model_validate(data or {})
    except ValidationError as err:
        raise FakeScenarioError(f"fake NVML scenario {path} is invalid: {_problems(err)}") from err


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                     for e in err.errors())


def write_scenario(path: str | Path, scenario: FakeScenario) -> None:
    """Replace the scenario file atomically, so a running fake never reads half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(scenario.model_dump(mode="json"), indent=1, sort_keys=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)  # a temp file is private; the scenario is read by other processes
    os.replace(handle.name, path)


def healthy_node(*, gpus: int = 8, seed: str = "sovereign") -> FakeScenario:
    """``gpus`` healthy H100s with UUIDs and PCI addresses derived from ``seed`` (stable per node)."""
    return FakeScenario(gpus=[
        FakeGpu(uuid=f"GPU-{uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f'sovereign-fake/{seed}/{i}')}",
                pci_bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0", minor_number=i)
        for i in range(gpus)])


def update_gpu(path: str | Path, *, gpu: int, **readings: Any) -> None:
    """Set readings of GPU ``gpu`` by field name (see FakeGpu), e.g. ``temperature_c=88``."""
    def change(current: FakeGpu) -> FakeGpu:
        try:
            return FakeGpu.model_validate({**current.model_dump(), **readings})
        except ValidationError as err:
            raise FakeScenarioError(f"cannot set {sorted(readings)} on gpu={gpu}: "
                                    f"{_problems(err)}") from err
    _edit(path, gpu, change)


def set_fault(path: str | Path, *, gpu: int, fault: FaultName) -> None:
    """Apply one of the FAULTS presets to GPU ``gpu``."""
    if fault not in FAULTS:
        raise FakeScenarioError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    _edit(path, gpu, FAULTS[fault])


def inject_xid(path: str | Path, *, gpu: int, xid: int, count: int = 1) -> None:
    """Append ``count`` XID ``xid`` events for GPU ``gpu``; the fake delivers each once.

    An XID that needs a GPU reset or a reboot also sets the GPU's recovery action, as drivers
    with the field do, unless a more drastic action is already pending.
    """
    stamp = time.time_ns()

    def add(current: FakeGpu) -> FakeGpu:
        events = [*current.xid_events,
                  *(FakeXid(id=f"{stamp}-{n}", xid=xid) for n in range(count))]
        action = _xid_recovery(xid)
        changed = {"xid_events": events}
        if action is not None and current.recovery_action in (
                pynvml.NVML_GPU_RECOVERY_ACTION_NONE, pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET):
            changed["recovery_action"] = action
        return current.model_copy(update=changed)
    _edit(path, gpu, add)


def set_driver(path: str | Path, *, loaded: bool) -> None:
    """Unload (every NVML call fails with DriverNotLoaded) or reload the fake driver."""
    scenario = load_scenario(path)
    write_scenario(path, scenario.model_copy(update={"driver_loaded": loaded}))


def clear_faults(path: str | Path, *, gpu: int | None = None) -> None:
    """Reset GPU ``gpu`` (every GPU when None): its FAULT_FIELDS back to healthy defaults, and
    its recovery action back to None (a driver without the field keeps answering NotSupported)."""
    scenario = load_scenario(path)
    if gpu is not None:
        _check_index(path, scenario, gpu)
    healthy = {name: FakeGpu.model_fields[name].get_default(call_default_factory=True)
               for name in FAULT_FIELDS}

    def reset(current: FakeGpu) -> FakeGpu:
        fields = dict(healthy)
        if current.recovery_action is None:
            fields["recovery_action"] = None
        return current.model_copy(update=fields)
    gpus = [reset(g) if gpu in (None, i) else g for i, g in enumerate(scenario.gpus)]
    write_scenario(path, scenario.model_copy(update={"gpus": gpus}))


def _edit(path: str | Path, gpu: int, change: Callable[[FakeGpu], FakeGpu]) -> None:
    scenario = load_scenario(path)
    _check_index(path, scenario, gpu)
    gpus = list(scenario.gpus)
    gpus[gpu] = change(gpus[gpu])
    write_scenario(path, scenario.model_copy(update={"gpus": gpus}))


def _check_index(path: str | Path, scenario: FakeScenario, gpu: int) -> None:
    if not 0 <= gpu < len(scenario.gpus):
        raise FakeScenarioError(
            f"fake NVML scenario {path} has {len(scenario.gpus)} GPUs; gpu={gpu} is out of range")
