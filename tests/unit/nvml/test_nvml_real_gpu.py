"""Real NVML on a machine with NVIDIA GPUs: every GPU reads, and the readings are sane.

Marked ``gpu``: the pytest plugin skips these where ``pynvml.nvmlInit`` fails or finds no GPU.
Data-centre GPUs with MIG (A100/H100/H200/B200 class) must also report a row remapper and a MIG
mode; other GPUs may answer NotSupported for those.
"""

from __future__ import annotations

import pynvml
import pytest

from sovereign.nvml import open_reader

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def readings():
    reader = open_reader()
    try:
        yield reader.read()
    finally:
        reader.close()


def test_every_gpu_has_an_identity(readings):
    assert readings, "NVML lists no GPUs"
    for reading in readings:
        identity = reading.identity
        assert identity.uuid.startswith(("GPU-", "MIG-")), identity
        assert identity.name.startswith("NVIDIA"), identity
        assert identity.pci_bus_id.count(":") == 2, identity
        assert not reading.lost, f"GPU {identity.index} is lost"


def test_thermal_and_power_readings_are_in_physical_ranges(readings):
    for reading in readings:
        assert 0 < reading.temperature_c < 110
        assert reading.temperature_c < reading.slowdown_temp_c < reading.shutdown_temp_c < 130
        assert 0 < reading.power_usage_w <= reading.power_limit_w * 1.5
        assert 50 <= reading.power_limit_w <= 1500


def test_memory_and_utilization_readings_add_up(readings):
    for reading in readings:
        assert reading.fb_total_mib > 1024
        # NVML's used + free leaves out memory the driver reserves, so it may fall short of total.
        assert reading.fb_used_mib + reading.fb_free_mib <= reading.fb_total_mib
        assert 0 <= reading.gpu_util_pct <= 100 and 0 <= reading.mem_copy_util_pct <= 100


MIG_CAPABLE = ("A100", "A30", "H100", "H200", "H800", "B200", "GB200")


def test_error_counters_are_counts(readings):
    for reading in readings:
        for count in (reading.ecc_corrected_volatile, reading.ecc_uncorrected_volatile,
                      reading.ecc_corrected_aggregate, reading.ecc_uncorrected_aggregate,
                      reading.pcie_replay_count):
            assert count is None or count >= 0
        assert reading.clock_event_reasons >= 0
        rows = reading.remapped_rows
        if any(model in reading.identity.name for model in MIG_CAPABLE):
            assert rows is not None, "Ampere and newer data-centre GPUs have a row remapper"
            assert reading.mig_enabled in (True, False)
        if rows is not None:
            assert rows.correctable >= 0 and rows.uncorrectable >= 0
        if reading.nvlink is not None:
            assert 0 < reading.nvlink.active_links <= pynvml.NVML_NVLINK_MAX_LINKS


def test_waiting_for_xid_events_returns_within_the_timeout():
    reader = open_reader()
    try:
        reader.open()
        events = reader.wait_for_xids(timeout_s=0.5)
    finally:
        reader.close()

    assert all(e.gpu_index is None or e.gpu_index >= 0 for e in events)


def test_clocks_and_energy_read_as_dcgm_exporter_reports_them(readings):
    for reading in readings:
        assert 0 < reading.sm_clock_mhz < 4000 and 0 < reading.mem_clock_mhz < 10000
        assert reading.total_energy_mj is None or reading.total_energy_mj > 0
        assert reading.fb_reserved_mib is None or 0 <= reading.fb_reserved_mib < reading.fb_total_mib


def test_the_recovery_action_field_reads_none_on_a_healthy_gpu_or_is_absent(readings):
    # R555+ drivers answer NVML_FI_DEV_GET_GPU_RECOVERY_ACTION; a healthy GPU then needs no action.
    for reading in readings:
        assert reading.recovery_action in (None, pynvml.NVML_GPU_RECOVERY_ACTION_NONE), reading
        assert not [e for e in reading.errors if e.startswith("recovery_action")], reading.errors


def test_the_driver_version_is_read_for_dcgm_exporters_label():
    reader = open_reader()
    try:
        reader.open()
        version = reader.driver_version
    finally:
        reader.close()

    assert version.count(".") >= 1 and version.split(".")[0].isdigit(), version
