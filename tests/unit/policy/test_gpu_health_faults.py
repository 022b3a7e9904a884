"""Every scripted fault of the fake NVML, read through the real reader, meets its health rule."""

from __future__ import annotations

import pytest

from sovereign_dev.nvml_fake import clear_faults, inject_xid, set_fault, update_gpu
from sovereign.policy.gpu_health import GpuHealthSettings, assess_gpu, summarize_node

SETTINGS = GpuHealthSettings(xid_quiet_window_s=30, recovery_clean_polls=2)


@pytest.fixture
def scenario(healthy_gpus):
    return healthy_gpus(gpus=8, seed="gpu-node")


def node_after_poll(reader, memories, *, now):
    """One agent poll, as the service does it: drain XIDs, read, assess every GPU, summarise."""
    xids = reader.wait_for_xids(timeout_s=0.1)
    verdicts = []
    for reading in reader.read():
        index = reading.identity.index
        verdict, memories[index] = assess_gpu(
            reading, xids=[e.xid for e in xids if e.gpu_index in (index, None)],
            memory=memories.get(index), now=now, settings=SETTINGS)
        verdicts.append(verdict)
    return summarize_node(verdicts)


@pytest.mark.parametrize("fault, reason, status", [
    ("ecc-dbe", "UncorrectableECCOnGPU5", "False"),
    ("remap-pending", "RowRemapPendingOnGPU5", "False"),
    ("remap-failure", "RowRemapFailureOnGPU5", "False"),
    ("thermal-slowdown", "ThermalSlowdownOnGPU5", "True"),
    ("gpu-lost", "GPULostOnGPU5", "False"),
    ("reset-required", "GPUResetRequiredOnGPU5", "False"),
    ("reboot-required", "NodeRebootRequiredOnGPU5", "False"),
    ("drain-p2p", "DrainP2POnGPU5", "False"),
])
def test_each_scripted_fault_shows_on_the_node_and_clears(scenario, reader, fault, reason,
                                                          status):
    memories = {}
    set_fault(scenario, gpu=5, fault=fault)

    faulty = node_after_poll(reader, memories, now=0)
    clear_faults(scenario)
    recovered = [node_after_poll(reader, memories, now=t).reason for t in (1, 2)]

    assert (faulty.reason, faulty.condition_status) == (reason, status)
    assert recovered == [reason, "AllGPUsHealthy"]


def test_an_xid_79_storm_holds_one_gpu_until_it_is_reset(scenario, reader):
    memories = {}
    inject_xid(scenario, gpu=2, xid=79, count=50)

    faulty = node_after_poll(reader, memories, now=0)
    much_later = node_after_poll(reader, memories, now=3600)
    clear_faults(scenario)  # the reset: the fake's recovery action goes back to None
    after = [node_after_poll(reader, memories, now=t).reason for t in (3601, 3602)]

    assert (faulty.reason, faulty.taint_reason, faulty.fatal) == ("Xid79OnGPU2", "Xid79", True)
    assert faulty.healthy_gpus == 7
    assert much_later.reason == "Xid79OnGPU2"
    assert after == ["Xid79OnGPU2", "AllGPUsHealthy"]


def test_on_a_driver_without_the_recovery_field_a_reset_xid_outlasts_the_reset(scenario, reader):
    memories = {}
    update_gpu(scenario, gpu=1, recovery_action=None)
    inject_xid(scenario, gpu=1, xid=48)
    node_after_poll(reader, memories, now=0)
    clear_faults(scenario)

    after = [node_after_poll(reader, memories, now=t).reason for t in (1, 2, 3)]

    assert after == ["Xid48OnGPU1"] * 3
