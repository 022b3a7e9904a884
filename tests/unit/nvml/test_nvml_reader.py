"""NvmlReader over the scripted fake: what each NVML answer becomes in a GpuReading."""

from __future__ import annotations

import pytest

from sovereign.nvml import NvmlReader, NvmlUnavailable, open_reader
from sovereign_dev.nvml_fake import (
    FakeNvml,
    healthy_node,
    inject_xid,
    set_driver,
    set_fault,
    update_gpu,
    write_scenario,
)
from sovereign.nvml.readings import NvlinkErrors, RemappedRows, XidEvent


@pytest.fixture
def scenario(healthy_gpus):
    return healthy_gpus(gpus=4, seed="node-a")


def test_reads_identity_and_every_reading_in_agent_units(reader):
    readings = reader.read()

    assert [r.identity.index for r in readings] == [0, 1, 2, 3]
    first = readings[0]
    assert first.identity.uuid.startswith("GPU-") and first.identity.name == "NVIDIA H100 80GB HBM3"
    assert (first.identity.pci_bus_id, first.identity.device) == ("00000000:18:00.0", "nvidia0")
    assert (first.temperature_c, first.slowdown_temp_c, first.shutdown_temp_c) == (34, 89, 92)
    assert (first.power_usage_w, first.power_limit_w) == (72.0, 700.0)
    assert (first.fb_total_mib, first.fb_used_mib, first.fb_free_mib) == (81559, 0, 81559)
    assert (first.ecc_uncorrected_volatile, first.ecc_corrected_aggregate) == (0, 0)
    assert first.remapped_rows == RemappedRows(correctable=0, uncorrectable=0, pending=False,
                                               failure=False)
    assert first.nvlink == NvlinkErrors(active_links=18, crc_flit=0, crc_data=0, replay=0,
                                        recovery=0)
    assert (first.retired_pages, first.mig_enabled, first.lost, first.errors) == (
        None, False, False, ())
    assert (first.recovery_action, reader.driver_version) == (0, "580.95.05")
    assert (first.sm_clock_mhz, first.mem_clock_mhz, first.memory_temp_c, first.total_energy_mj,
            first.enc_util_pct, first.dec_util_pct, first.fb_reserved_mib) == (
        1980, 2619, 30, 1_000_000, 0, 0, 0)


def test_field_values_a_driver_lacks_are_absent_and_the_others_still_read(scenario, reader):
    update_gpu(scenario, gpu=0, memory_temp_c=None, fb_reserved_mib=None, sm_clock_mhz=None)

    first = reader.read()[0]

    assert (first.memory_temp_c, first.fb_reserved_mib, first.sm_clock_mhz) == (None, None, None)
    assert (first.recovery_action, first.mem_clock_mhz, first.errors) == (0, 2619, ())


def test_the_recovery_action_field_is_read_and_absent_on_drivers_without_it(scenario, reader):
    set_fault(scenario, gpu=0, fault="reboot-required")
    update_gpu(scenario, gpu=1, recovery_action=None)

    readings = reader.read()

    assert [r.recovery_action for r in readings] == [2, None, 0, 0]
    assert readings[1].errors == ()


def test_a_reset_class_xid_sets_the_recovery_action_as_the_driver_does(scenario, reader):
    reader.open()
    inject_xid(scenario, gpu=2, xid=119)
    inject_xid(scenario, gpu=3, xid=13)

    assert [r.recovery_action for r in reader.read()] == [0, 0, 1, 0]


def test_unsupported_calls_leave_readings_absent_without_errors(scenario, reader):
    update_gpu(scenario, gpu=1, temperature_c=None, shutdown_temp_c=None, power_usage_w=None,
               ecc_uncorrected_volatile=None, remapped_rows=None, nvlink=None, mig_mode=None,
               clock_event_reasons=None, pcie_replay_count=None)

    reading = reader.read()[1]

    assert (reading.temperature_c, reading.shutdown_temp_c, reading.power_usage_w,
            reading.ecc_uncorrected_volatile, reading.remapped_rows, reading.nvlink,
            reading.mig_enabled, reading.clock_event_reasons, reading.pcie_replay_count) == (
        None, None, None, None, None, None, None, None, None)
    assert (reading.lost, reading.errors, reading.slowdown_temp_c) == (False, (), 89)


def test_older_gpus_report_retired_pages(scenario, reader):
    update_gpu(scenario, gpu=0, remapped_rows=None,
               retired_pages={"single_bit": 2, "double_bit": 1, "pending": True})

    pages = reader.read()[0].retired_pages

    assert (pages.single_bit, pages.double_bit, pages.pending) == (2, 1, True)


def test_a_lost_gpu_keeps_its_identity_and_loses_its_readings(scenario, reader):
    set_fault(scenario, gpu=2, fault="gpu-lost")

    readings = reader.read()

    lost = readings[2]
    assert (lost.lost, lost.temperature_c, lost.identity.uuid) == (
        True, None, reader.identities[2].uuid)
    assert [r.lost for r in readings] == [False, False, True, False]


def test_a_gpu_lost_before_the_agent_started_is_reported_without_identity(scenario):
    set_fault(scenario, gpu=0, fault="gpu-lost")
    reader = open_reader(fake_scenario=scenario)

    reading = reader.read()[0]

    assert (reading.lost, reading.identity.uuid, reading.identity.index) == (True, "", 0)


def test_nvml_without_a_driver_is_unavailable_until_the_driver_returns(scenario):
    write_scenario(scenario, healthy_node(gpus=1).model_copy(update={"driver_loaded": False}))
    reader = NvmlReader(library=FakeNvml(scenario))

    with pytest.raises(NvmlUnavailable, match="NVML could not start: Driver Not Loaded"):
        reader.read()

    write_scenario(scenario, healthy_node(gpus=1))
    assert len(reader.read()) == 1


def test_nvml_failing_while_open_is_unavailable_and_reopens_when_it_returns(scenario, reader):
    set_driver(scenario, loaded=False)

    with pytest.raises(NvmlUnavailable, match="NVML stopped answering: Driver Not Loaded"):
        reader.read()
    with pytest.raises(NvmlUnavailable, match="NVML could not start"):
        reader.read()

    set_driver(scenario, loaded=True)
    assert [r.lost for r in reader.read()] == [False] * 4


def test_xid_events_arrive_once_with_their_gpu(scenario, reader):
    inject_xid(scenario, gpu=3, xid=79)
    inject_xid(scenario, gpu=1, xid=13)

    first = reader.wait_for_xids(timeout_s=5)
    again = reader.wait_for_xids(timeout_s=0.1)

    assert sorted(first, key=lambda e: e.xid) == [XidEvent(xid=13, gpu_index=1),
                                                  XidEvent(xid=79, gpu_index=3)]
    assert again == []


def test_a_storm_of_xids_is_drained_in_one_wait(scenario, reader):
    inject_xid(scenario, gpu=0, xid=13, count=200)

    events = reader.wait_for_xids(timeout_s=5)

    assert len(events) == 200 and {e.xid for e in events} == {13}


def test_xid_events_from_before_the_agent_started_are_not_replayed(scenario):
    inject_xid(scenario, gpu=0, xid=79)
    reader = open_reader(fake_scenario=scenario)
    reader.open()

    assert reader.wait_for_xids(timeout_s=0.2) == []


def test_a_gpu_that_cannot_report_xids_does_not_stop_the_others(scenario):
    update_gpu(scenario, gpu=0, xid_events_supported=False)
    reader = open_reader(fake_scenario=scenario)
    reader.open()
    inject_xid(scenario, gpu=0, xid=79)
    inject_xid(scenario, gpu=2, xid=48)

    assert reader.wait_for_xids(timeout_s=5) == [XidEvent(xid=48, gpu_index=2)]
