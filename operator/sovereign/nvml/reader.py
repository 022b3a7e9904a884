"""Read every GPU through NVML and listen for XID events: the only module that calls NVML.

``NvmlLibrary`` is the small part of ``pynvml`` (from nvidia-ml-py) the agent uses, as a
``typing.Protocol``: the ``pynvml`` module satisfies it as it is, and ``nvml.fake.FakeNvml``
implements it from a scripted scenario, so every line here runs in tests without a GPU.

``NvmlReader`` turns those calls into ``readings.GpuReading`` values:
- a call the GPU does not support (NotSupported, or a driver too old to have the function) leaves
  that reading ``None``; it never makes the GPU unhealthy by itself;
- ``NVMLError_GpuIsLost`` on any call marks the GPU ``lost`` (the health rules call that fatal);
- NVML failing as a whole (driver not loaded, library missing) raises ``NvmlUnavailable``, and
  the next ``read()`` tries to open NVML again.

Called by ``services.node_agent`` (the ``sovereign agent`` poll loop) and the ``gpu``-marked tests.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pynvml

from sovereign.nvml.readings import (
    GpuIdentity,
    GpuReading,
    NvlinkErrors,
    RemappedRows,
    RetiredPages,
    XidEvent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Answers that mean "this GPU or driver has no such reading": the reading is absent, not bad.
_ABSENT = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound,
           pynvml.NVMLError_NoPermission)
# Answers that mean NVML itself is gone, not one GPU: the whole poll fails and NVML is reopened.
_NVML_GONE = (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded,
              pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_LibRmVersionMismatch)
_NVLINK_COUNTERS = {
    "crc_flit": pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
    "crc_data": pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA,
    "replay": pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
    "recovery": pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
}
_MIB = 1024 * 1024
# NVML field values read per GPU, by the name a failed reading is logged under.
_FIELDS = {
    pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: "recovery_action",
    pynvml.NVML_FI_DEV_MEMORY_TEMP: "memory_temp",
}
# Which member of an nvmlValue_t union holds a field value, by its valueType.
_VALUE_MEMBERS = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


class NvmlLibrary(Protocol):
    """The pynvml functions the reader calls (names and signatures as in nvidia-ml-py)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: int) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int: ...  # noqa: A002 - pynvml's name
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int: ...
    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]: ...
    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]: ...
    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int: ...
    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]: ...
    def nvmlDeviceGetRetiredPages(self, device: Any, sourceFilter: int) -> list[int]: ...
    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int: ...
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int: ...
    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int: ...
    def nvmlDeviceGetNvLinkState(self, device: Any, link: int) -> int: ...
    def nvmlDeviceGetNvLinkErrorCounter(self, device: Any, link: int, counter: int) -> int: ...
    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]: ...
    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[int]) -> Any: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlEventSetCreate(self) -> Any: ...
    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None: ...
    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any: ...
    def nvmlEventSetFree(self, eventSet: Any) -> None: ...


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used at all (no driver, no library, not initialised); the message says why.

    ``nvml_error`` is NVML's own words (e.g. "Driver Not Loaded"), the same on every failed poll,
    so the node condition built from it does not change while the outage lasts.
    """

    def __init__(self, message: str, *, nvml_error: pynvml.NVMLError) -> None:
        super().__init__(f"{message}: {nvml_error}")
        self.nvml_error = str(nvml_error)


class _GpuLost(Exception):
    """Raised inside one GPU's poll when NVML answers GpuIsLost; ends that GPU's poll."""


class NvmlReader:
    """Opens NVML, reads every GPU on demand and waits for XID events.

    Not thread-safe: the agent calls ``wait_for_xids`` and ``read`` from one loop.
    """

    def __init__(self, *, library: NvmlLibrary) -> None:
        self._lib = library
        self._handles: list[Any | None] = []
        self._identities: list[GpuIdentity] = []
        self._index_by_handle: dict[Any, int] = {}
        self._event_set: Any | None = None
        self._open = False
        self._driver_version = ""

    @property
    def identities(self) -> tuple[GpuIdentity, ...]:
        return tuple(self._identities)

    @property
    def driver_version(self) -> str:
        """The driver's version as NVML reports it ("" until opened, or if it cannot say)."""
        return self._driver_version

    def open(self) -> None:
        """Initialise NVML, learn each GPU's identity and register for XID events."""
        if self._open:
            return
        try:
            self._lib.nvmlInit()
        except pynvml.NVMLError as err:
            raise NvmlUnavailable("NVML could not start", nvml_error=err) from err
        self._open = True
        try:
            count = self._lib.nvmlDeviceGetCount()
            self._handles = [self._handle(index) for index in range(count)]
            self._identities = [self._identity(index, handle)
                                for index, handle in enumerate(self._handles)]
        except pynvml.NVMLError as err:
            self.close()
            raise NvmlUnavailable("NVML could not list the GPUs", nvml_error=err) from err
        self._index_by_handle = {_handle_key(h): i for i, h in enumerate(self._handles)
                                 if h is not None}
        try:
            self._driver_version = _text(self._lib.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as err:
            log.warning("NVML does not say the driver version: %s", err)
        self._event_set = self._register_xid_events()

    def close(self) -> None:
        if not self._open:
            return
        if self._event_set is not None:
            self._quietly(self._lib.nvmlEventSetFree, self._event_set)
        self._quietly(self._lib.nvmlShutdown)
        self._open = False
        self._event_set = None
        self._handles = []

    def read(self) -> list[GpuReading]:
        """One reading per GPU, in NVML index order; opens NVML first if it is not open."""
        self.open()
        try:
            return [self._read_gpu(identity, handle)
                    for identity, handle in zip(self._identities, self._handles, strict=True)]
        except _NVML_GONE as err:
            self.close()
            raise NvmlUnavailable("NVML stopped answering", nvml_error=err) from err

    def wait_for_xids(self, *, timeout_s: float) -> list[XidEvent]:
        """Block up to ``timeout_s`` for XID events; return the first one and any already queued."""
        if self._event_set is None:
            time.sleep(timeout_s)
            return []
        events: list[XidEvent] = []
        timeout_ms = max(0, int(timeout_s * 1000))
        while True:
            try:
                data = self._lib.nvmlEventSetWait_v2(self._event_set, timeout_ms)
            except pynvml.NVMLError_Timeout:
                return events
            except pynvml.NVMLError as err:
                # A broken event set must not turn the loop into a busy spin.
                log.warning("waiting for XID events failed: %s", err)
                if not events:
                    time.sleep(timeout_s)
                return events
            events.append(XidEvent(xid=int(data.eventData), gpu_index=self._event_gpu(data)))
            timeout_ms = 0  # drain what is already queued, then return

    # -- internals ------------------------------------------------------------------------------

    def _handle(self, index: int) -> Any | None:
        try:
            return self._lib.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError_GpuIsLost:
            return None

    def _identity(self, index: int, handle: Any | None) -> GpuIdentity:
        if handle is None:
            return GpuIdentity(index=index, uuid="", name="", pci_bus_id="", minor_number=None)
        probe = _Probe([])
        try:
            uuid = probe("uuid", self._lib.nvmlDeviceGetUUID, handle) or ""
            name = probe("name", self._lib.nvmlDeviceGetName, handle) or ""
            pci = probe("pci_bus_id", self._lib.nvmlDeviceGetPciInfo, handle)
            minor = probe("minor_number", self._lib.nvmlDeviceGetMinorNumber, handle)
        except _GpuLost:
            return GpuIdentity(index=index, uuid="", name="", pci_bus_id="", minor_number=None)
        return GpuIdentity(index=index, uuid=_text(uuid), name=_text(name),
                           pci_bus_id=_text(pci.busId) if pci is not None else "",
                           minor_number=minor)

    def _register_xid_events(self) -> Any | None:
        try:
            event_set = self._lib.nvmlEventSetCreate()
        except pynvml.NVMLError as err:
            log.warning("XID events unavailable, relying on polling only: %s", err)
            return None
        registered = 0
        for identity, handle in zip(self._identities, self._handles, strict=True):
            if handle is None:
                continue
            try:
                self._lib.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError,
                                                   event_set)
                registered += 1
            except pynvml.NVMLError as err:
                log.warning("GPU %d (%s) cannot report XID events: %s", identity.index,
                            identity.uuid, err)
        if registered == 0:
            self._quietly(self._lib.nvmlEventSetFree, event_set)
            return None
        return event_set

    def _event_gpu(self, data: Any) -> int | None:
        # By handle, not UUID: the GPU that raised XID 79 is lost and cannot answer for its UUID.
        return self._index_by_handle.get(_handle_key(data.device))

    def _read_gpu(self, identity: GpuIdentity, handle: Any | None) -> GpuReading:
        if handle is None:
            return GpuReading(identity=identity, lost=True)
        errors: list[str] = []
        probe = _Probe(errors)
        lib = self._lib
        try:
            memory = probe("memory", lib.nvmlDeviceGetMemoryInfo, handle)
            utilization = probe("utilization", lib.nvmlDeviceGetUtilizationRates, handle)
            power = probe("power_usage", lib.nvmlDeviceGetPowerUsage, handle)
            limit = probe("power_limit", lib.nvmlDeviceGetEnforcedPowerLimit, handle)
            mig = probe("mig_mode", lib.nvmlDeviceGetMigMode, handle)
            fields = self._fields(probe, handle)
            memory_v2 = probe("memory_v2", lib.nvmlDeviceGetMemoryInfo, handle,
                              pynvml.nvmlMemory_v2)
            encoder = probe("encoder_util", lib.nvmlDeviceGetEncoderUtilization, handle)
            decoder = probe("decoder_util", lib.nvmlDeviceGetDecoderUtilization, handle)
            reading = GpuReading(
                identity=identity,
                temperature_c=probe("temperature", lib.nvmlDeviceGetTemperature, handle,
                                    pynvml.NVML_TEMPERATURE_GPU),
                memory_temp_c=fields.get(pynvml.NVML_FI_DEV_MEMORY_TEMP),
                slowdown_temp_c=probe("slowdown_temp", lib.nvmlDeviceGetTemperatureThreshold,
                                      handle, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
                shutdown_temp_c=probe("shutdown_temp", lib.nvmlDeviceGetTemperatureThreshold,
                                      handle, pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
                power_usage_w=power / 1000 if power is not None else None,
                power_limit_w=limit / 1000 if limit is not None else None,
                gpu_util_pct=utilization.gpu if utilization is not None else None,
                mem_copy_util_pct=utilization.memory if utilization is not None else None,
                enc_util_pct=encoder[0] if encoder is not None else None,
                dec_util_pct=decoder[0] if decoder is not None else None,
                sm_clock_mhz=probe("sm_clock", lib.nvmlDeviceGetClockInfo, handle,
                                   pynvml.NVML_CLOCK_SM),
                mem_clock_mhz=probe("mem_clock", lib.nvmlDeviceGetClockInfo, handle,
                                    pynvml.NVML_CLOCK_MEM),
                total_energy_mj=probe("total_energy", lib.nvmlDeviceGetTotalEnergyConsumption,
                                      handle),
                fb_total_mib=memory.total // _MIB if memory is not None else None,
                fb_used_mib=memory.used // _MIB if memory is not None else None,
                fb_free_mib=memory.free // _MIB if memory is not None else None,
                fb_reserved_mib=memory_v2.reserved // _MIB if memory_v2 is not None else None,
                ecc_corrected_volatile=self._ecc(probe, handle, corrected=True, volatile=True),
                ecc_uncorrected_volatile=self._ecc(probe, handle, corrected=False, volatile=True),
                ecc_corrected_aggregate=self._ecc(probe, handle, corrected=True, volatile=False),
                ecc_uncorrected_aggregate=self._ecc(probe, handle, corrected=False,
                                                    volatile=False),
                remapped_rows=self._remapped_rows(probe, handle),
                retired_pages=self._retired_pages(probe, handle),
                clock_event_reasons=probe("clock_event_reasons",
                                          lib.nvmlDeviceGetCurrentClocksEventReasons, handle),
                pcie_replay_count=probe("pcie_replay", lib.nvmlDeviceGetPcieReplayCounter, handle),
                nvlink=self._nvlink(probe, handle),
                mig_enabled=mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE if mig is not None else None,
                recovery_action=fields.get(pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION),
                errors=tuple(errors),
            )
        except _GpuLost:
            return GpuReading(identity=identity, lost=True)
        if errors:
            log.debug("GPU %d readings failed: %s", identity.index, "; ".join(errors))
        return reading

    def _ecc(self, probe: _Probe, handle: Any, *, corrected: bool, volatile: bool) -> int | None:
        kind = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED if corrected
                else pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        counter = pynvml.NVML_VOLATILE_ECC if volatile else pynvml.NVML_AGGREGATE_ECC
        name = f"ecc_{'corrected' if corrected else 'uncorrected'}_{'volatile' if volatile else 'aggregate'}"
        return probe(name, self._lib.nvmlDeviceGetTotalEccErrors, handle, kind, counter)

    def _remapped_rows(self, probe: _Probe, handle: Any) -> RemappedRows | None:
        rows = probe("remapped_rows", self._lib.nvmlDeviceGetRemappedRows, handle)
        if rows is None:
            return None
        correctable, uncorrectable, pending, failure = rows
        return RemappedRows(correctable=correctable, uncorrectable=uncorrectable,
                            pending=bool(pending), failure=bool(failure))

    def _retired_pages(self, probe: _Probe, handle: Any) -> RetiredPages | None:
        single = probe("retired_pages_sbe", self._lib.nvmlDeviceGetRetiredPages, handle,
                       pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
        if single is None:
            return None
        double = probe("retired_pages_dbe", self._lib.nvmlDeviceGetRetiredPages, handle,
                       pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        pending = probe("retired_pages_pending",
                        self._lib.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        return RetiredPages(single_bit=len(single), double_bit=len(double or []),
                            pending=bool(pending))

    def _fields(self, probe: _Probe, handle: Any) -> dict[int, int]:
        """The NVML field values the agent reads, in one call: the recovery action the driver
        asks for and the memory temperature. A field the driver does not have is left out.

        Field values carry their own return code: an old driver answers the call as a whole but
        marks one field NotSupported (or the whole call FunctionNotFound, before R450).
        """
        values = probe("field_values", self._lib.nvmlDeviceGetFieldValues, handle, list(_FIELDS))
        found: dict[int, int] = {}
        for value in values or ():
            name = _FIELDS.get(value.fieldId, str(value.fieldId))
            if value.nvmlReturn == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost
            if value.nvmlReturn != pynvml.NVML_SUCCESS:
                if value.nvmlReturn not in (pynvml.NVML_ERROR_NOT_SUPPORTED,
                                            pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                    probe.errors.append(f"{name}: {pynvml.NVMLError(value.nvmlReturn)}")
                continue
            member = _VALUE_MEMBERS.get(value.valueType)
            if member is None:
                probe.errors.append(f"{name}: unexpected value type {value.valueType}")
                continue
            found[value.fieldId] = int(getattr(value.value, member))
        return found

    def _nvlink(self, probe: _Probe, handle: Any) -> NvlinkErrors | None:
        totals: dict[str, int | None] = dict.fromkeys(_NVLINK_COUNTERS)
        active = 0
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                state = self._lib.nvmlDeviceGetNvLinkState(handle, link)
            except pynvml.NVMLError_GpuIsLost as err:
                raise _GpuLost from err
            except _NVML_GONE:
                raise
            except (*_ABSENT, pynvml.NVMLError_InvalidArgument):
                break  # past the GPU's last link, or no NVLink at all
            except pynvml.NVMLError as err:
                probe.errors.append(f"nvlink_state[{link}]: {err}")
                continue
            if not state:
                continue
            active += 1
            for name, counter in _NVLINK_COUNTERS.items():
                value = probe(f"nvlink_{name}[{link}]", self._lib.nvmlDeviceGetNvLinkErrorCounter,
                              handle, link, counter)
                if value is not None:
                    totals[name] = (totals[name] or 0) + value
        if active == 0:
            return None
        return NvlinkErrors(active_links=active, **totals)

    @staticmethod
    def _quietly(call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except pynvml.NVMLError as err:
            log.debug("ignored while closing NVML: %s", err)


class _Probe:
    """Calls one NVML function and sorts its failure into absent, lost or a logged error."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def __call__(self, field: str, call: Callable[..., T], *args: Any) -> T | None:
        try:
            return call(*args)
        except pynvml.NVMLError_GpuIsLost as err:
            raise _GpuLost from err
        except _NVML_GONE:
            raise
        except _ABSENT:
            return None
        except pynvml.NVMLError as err:
            self.errors.append(f"{field}: {err}")
            return None


def _handle_key(handle: Any) -> Any:
    """Something equal for two references to one device: the address for pynvml's ctypes handles
    (a NULL handle, NVML's "no particular GPU", gives None), the handle itself otherwise."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except ctypes.ArgumentError:
        return handle


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
