"""The GPU health rules: XID classes after NVIDIA's catalogue, holding until a reset or reboot,
recovery actions, the remediation cap, the device plugin's view, reading rules, hysteresis and the
node summary."""

from __future__ import annotations

import dataclasses

import pynvml
import pytest
from pydantic import ValidationError

from sovereign.nvml.readings import GpuIdentity, GpuReading, RemappedRows, RetiredPages
from sovereign.policy.gpu_health import (
    GpuHealthSettings,
    GpuMemory,
    GpuVerdict,
    HealthState,
    assess_gpu,
    restore_memory,
    summarize_node,
)

SETTINGS = GpuHealthSettings(xid_quiet_window_s=60, recovery_clean_polls=3)


def h100(index: int = 0, **readings) -> GpuReading:
    """A healthy, idle H100 reading; keyword arguments override single readings."""
    identity = GpuIdentity(index=index, uuid=f"GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd",
                           name="NVIDIA H100 80GB HBM3", pci_bus_id=f"00000000:{index:02X}:00.0",
                           minor_number=index)
    base = GpuReading(
        identity=identity, temperature_c=35, slowdown_temp_c=89, shutdown_temp_c=92,
        power_usage_w=70.0, power_limit_w=700.0, gpu_util_pct=0, mem_copy_util_pct=0,
        fb_total_mib=81559, fb_used_mib=0, fb_free_mib=81559, ecc_corrected_volatile=0,
        ecc_uncorrected_volatile=0, ecc_corrected_aggregate=0, ecc_uncorrected_aggregate=0,
        remapped_rows=RemappedRows(correctable=0, uncorrectable=0, pending=False, failure=False),
        clock_event_reasons=0, pcie_replay_count=0, mig_enabled=False)
    return dataclasses.replace(base, **readings)


def assess(reading: GpuReading, *, xids=(), memory: GpuMemory | None = None, now: float = 0.0,
           settings: GpuHealthSettings = SETTINGS) -> tuple[GpuVerdict, GpuMemory]:
    return assess_gpu(reading, xids=list(xids), memory=memory, now=now, settings=settings)


def test_a_healthy_gpu_is_healthy():
    verdict, _ = assess(h100())

    assert (verdict.state, verdict.reason, verdict.ok) == (HealthState.HEALTHY, "Healthy", True)


NONE = pynvml.NVML_GPU_RECOVERY_ACTION_NONE
RESET = pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET
REBOOT = pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT


@pytest.mark.parametrize("xid", [8, 11, 13, 31, 43, 45, 68, 94])
def test_application_xids_leave_the_gpu_healthy(xid):
    verdict, _ = assess(h100(), xids=[xid])

    assert verdict.state == HealthState.HEALTHY


@pytest.mark.parametrize("xid", [63, 92])
def test_informational_xids_leave_the_gpu_healthy(xid):
    verdict, _ = assess(h100(), xids=[xid])

    assert verdict.state == HealthState.HEALTHY


RESET_CLASS = [48, 62, 64, 74, 95, 109, 110, 119, 120, 136, 140, 143, 154, 155, 156, 158]


@pytest.mark.parametrize("xid", RESET_CLASS)
def test_reset_class_xids_hold_the_gpu_unhealthy_until_a_reset_is_observed(xid):
    verdict, memory = assess(h100(recovery_action=NONE), xids=[xid], now=0)
    # Days later, with every reading clean: still held, time alone releases nothing.
    later, memory = assess(h100(recovery_action=NONE), now=86400 * 3, memory=memory)

    assert (verdict.state, verdict.fatal, verdict.reason) == ("Unhealthy", True, f"Xid{xid}")
    assert f"XID {xid}" in verdict.message and "needs a GPU reset" in verdict.message
    assert (later.state, later.reason, later.held_xids) == ("Unhealthy", f"Xid{xid}", (xid,))


def test_the_reboot_class_xid_79_says_it_needs_a_reboot_and_holds():
    verdict, memory = assess(h100(), xids=[79], now=0)
    later, _ = assess(h100(), now=10_000, memory=memory)

    assert (verdict.reason, verdict.fatal) == ("Xid79", True)
    assert "fallen off the bus" in verdict.message and "held until the node reboots" in \
        verdict.message
    assert later.state == "Unhealthy"


def test_a_reset_seen_through_the_recovery_action_releases_the_held_xid_after_clean_polls():
    _, memory = assess(h100(recovery_action=RESET), xids=[48], now=0)
    states = []
    for now in (10, 20, 30, 40):
        verdict, memory = assess(h100(recovery_action=NONE), now=now, memory=memory)
        states.append((verdict.state, verdict.reason))

    # The action went back to None at 10: released, then three clean polls publish Healthy.
    assert states == [("Unhealthy", "Xid48"), ("Unhealthy", "Xid48"), ("Healthy", "Healthy"),
                      ("Healthy", "Healthy")]
    assert (verdict.held_xids, verdict.resets) == ((), 1)


def test_without_the_recovery_action_field_only_a_reboot_releases_a_held_xid():
    _, memory = assess(h100(recovery_action=None), xids=[62], now=0)
    for now in range(1, 10):
        verdict, memory = assess(h100(recovery_action=None), now=now, memory=memory)
    assert (verdict.state, verdict.reason) == ("Unhealthy", "Xid62")

    after_reboot = restore_memory(verdict, now=100, rebooted=True, settings=SETTINGS)
    fresh, _ = assess(h100(recovery_action=None), now=100, memory=after_reboot)

    assert (after_reboot, fresh.state) == (None, "Healthy")


def test_an_action_that_stays_none_after_the_xid_is_no_evidence_of_a_reset():
    _, memory = assess(h100(recovery_action=NONE), xids=[119], now=0)
    for now in range(1, 6):
        verdict, memory = assess(h100(recovery_action=NONE), now=now, memory=memory)

    assert (verdict.state, verdict.reason) == ("Unhealthy", "Xid119")


@pytest.mark.parametrize("action, state, reason, fatal", [
    (pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET, "Unhealthy", "GPUResetRequired", True),
    (pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT, "Unhealthy", "NodeRebootRequired", True),
    (pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_P2P, "Unhealthy", "DrainP2P", False),
    (pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET, "Unhealthy", "GPUResetRequired", True),
    (pynvml.NVML_GPU_RECOVERY_ACTION_RECOVER_IMEX_DOMAIN, "Unhealthy", "RecoverIMEXDomain", False),
    (pynvml.NVML_GPU_RECOVERY_ACTION_BUS_RESET, "Unhealthy", "GPUResetRequired", True),
    (pynvml.NVML_GPU_RECOVERY_ACTION_SYSTEM_REBOOT, "Unhealthy", "NodeRebootRequired", True),
    (42, "Unhealthy", "RecoveryAction42", False),
    (pynvml.NVML_GPU_RECOVERY_ACTION_NONE, "Healthy", "Healthy", False),
    (None, "Healthy", "Healthy", False),
])
def test_each_recovery_action_and_what_it_makes_of_the_gpu(action, state, reason, fatal):
    verdict, _ = assess(h100(recovery_action=action))

    assert (verdict.state, verdict.reason, verdict.fatal) == (state, reason, fatal)
    if action not in (None, NONE):
        assert f"NVML recovery action {action}" in verdict.message


def test_a_gpu_whose_faults_return_after_max_resets_stays_down_until_a_reboot():
    capped = GpuHealthSettings(max_resets=2, recovery_clean_polls=1)
    memory, now = None, 0
    for _ in range(2):  # two faults, each released by a reset
        _, memory = assess(h100(recovery_action=RESET), xids=[95], now=now, memory=memory,
                           settings=capped)
        released, memory = assess(h100(recovery_action=NONE), now=now + 1, memory=memory,
                                  settings=capped)
        assert released.state == "Healthy"
        now += 10
    _, memory = assess(h100(recovery_action=RESET), xids=[95], now=now, memory=memory,
                       settings=capped)
    verdict, memory = assess(h100(recovery_action=NONE), now=now + 1, memory=memory,
                             settings=capped)
    later, _ = assess(h100(recovery_action=NONE), now=now + 1000, memory=memory, settings=capped)

    assert (verdict.state, verdict.reason, verdict.fatal) == ("Unhealthy", "RepeatedFaults", True)
    assert "after 2 GPU resets" in verdict.message and "until the node reboots" in verdict.message
    assert later.reason == "RepeatedFaults"
    assert restore_memory(later, now=0, rebooted=True, settings=capped) is None


def test_an_application_xid_storm_does_not_mark_the_gpu():
    verdict, _ = assess(h100(), xids=[13] * 500 + [43] * 500)

    assert verdict.state == HealthState.HEALTHY


def test_an_unclassified_xid_degrades_by_default_and_can_be_configured_unhealthy():
    degraded, _ = assess(h100(), xids=[999])
    assert "not in the XID catalogue" in degraded.message
    strict = GpuHealthSettings(unclassified_xid_state="Unhealthy")
    unhealthy, _ = assess(h100(), xids=[999], settings=strict)

    assert (degraded.state, degraded.reason) == (HealthState.DEGRADED, "Xid999")
    assert (unhealthy.state, unhealthy.fatal) == (HealthState.UNHEALTHY, False)


def test_a_lost_gpu_is_fatally_unhealthy():
    lost = GpuReading(identity=h100().identity, lost=True)

    verdict, _ = assess(lost)

    assert (verdict.state, verdict.reason, verdict.fatal) == (HealthState.UNHEALTHY, "GPULost",
                                                             True)


@pytest.mark.parametrize("readings, state, reason, fatal", [
    ({"ecc_uncorrected_volatile": 1}, HealthState.UNHEALTHY, "UncorrectableECC", True),
    ({"remapped_rows": RemappedRows(correctable=0, uncorrectable=1, pending=False, failure=True)},
     HealthState.UNHEALTHY, "RowRemapFailure", True),
    ({"remapped_rows": RemappedRows(correctable=0, uncorrectable=1, pending=True, failure=False)},
     HealthState.UNHEALTHY, "RowRemapPending", False),
    ({"remapped_rows": None,
      "retired_pages": RetiredPages(single_bit=0, double_bit=1, pending=True)},
     HealthState.UNHEALTHY, "RetiredPagesPending", False),
    ({"temperature_c": 90}, HealthState.UNHEALTHY, "ThermalNearShutdown", False),
    ({"clock_event_reasons": 0x40}, HealthState.DEGRADED, "ThermalSlowdown", False),
    ({"clock_event_reasons": 0x20}, HealthState.DEGRADED, "ThermalSlowdown", False),
    ({"temperature_c": 84}, HealthState.DEGRADED, "ThermalMarginLow", False),
])
def test_reading_rules(readings, state, reason, fatal):
    verdict, _ = assess(h100(**readings))

    assert (verdict.state, verdict.reason, verdict.fatal) == (state, reason, fatal)


def test_thresholds_come_from_the_settings():
    tolerant = GpuHealthSettings(max_uncorrectable_volatile_ecc=2, thermal_slowdown_margin_c=0)

    verdict, _ = assess(h100(ecc_uncorrected_volatile=2, temperature_c=88), settings=tolerant)

    assert verdict.state == HealthState.HEALTHY


def test_power_capping_and_idle_clock_events_are_not_thermal():
    verdict, _ = assess(h100(clock_event_reasons=0x1 | 0x4))

    assert verdict.state == HealthState.HEALTHY


def test_unsupported_readings_never_count_against_a_gpu():
    nothing = GpuReading(identity=h100().identity)  # every reading None: NotSupported

    verdict, _ = assess(nothing)

    assert verdict.state == HealthState.HEALTHY


def test_the_most_serious_finding_wins():
    verdict, _ = assess(h100(temperature_c=86, ecc_uncorrected_volatile=3), xids=[13])

    assert verdict.reason == "UncorrectableECC"


def test_an_unclassified_xid_holds_for_the_quiet_window_then_needs_clean_polls():
    verdict, memory = assess(h100(), xids=[999], now=0)
    timeline = []
    for now in (10, 30, 59, 61, 62, 63, 64):
        verdict, memory = assess(h100(), memory=memory, now=now)
        timeline.append((now, verdict.state))

    # Degraded through the 60 s window; after it, three clean polls (61, 62, 63) publish Healthy.
    assert timeline == [(10, "Degraded"), (30, "Degraded"), (59, "Degraded"),
                        (61, "Degraded"), (62, "Degraded"), (63, "Healthy"), (64, "Healthy")]


def test_a_new_unclassified_xid_restarts_the_quiet_window():
    _, memory = assess(h100(), xids=[999], now=0)
    _, memory = assess(h100(), xids=[999], now=50, memory=memory)

    verdict, _ = assess(h100(), now=100, memory=memory)

    assert verdict.state == HealthState.DEGRADED


def test_a_gpu_gets_worse_at_once_but_better_only_after_consecutive_clean_polls():
    pending = h100(remapped_rows=RemappedRows(correctable=0, uncorrectable=1, pending=True,
                                              failure=False))
    verdict, memory = assess(h100(), now=0)
    verdict, memory = assess(pending, now=1, memory=memory)
    assert verdict.reason == "RowRemapPending"

    # A bad poll between clean ones starts the count again: no flapping.
    states = []
    for now, reading in enumerate([h100(), h100(), pending, h100(), h100(), h100()], start=2):
        verdict, memory = assess(reading, now=now, memory=memory)
        states.append(verdict.state)

    assert states == ["Unhealthy"] * 5 + ["Healthy"]


def test_an_equally_serious_new_fault_replaces_the_reason_at_once():
    _, memory = assess(h100(ecc_uncorrected_volatile=1), now=0)

    verdict, _ = assess(GpuReading(identity=h100().identity, lost=True), now=1, memory=memory)

    assert verdict.reason == "GPULost"


def test_a_restarted_agent_on_the_same_boot_keeps_holding_a_reset_class_xid():
    published = GpuVerdict(index=0, uuid="GPU-x", state=HealthState.UNHEALTHY, reason="Xid79",
                           message="XID 79", fatal=True, held_xids=(48, 79), resets=1)
    memory = restore_memory(published, now=1000, rebooted=False, settings=SETTINGS)

    for now in (1001, 5000, 90000):
        held, memory = assess(h100(), now=now, memory=memory)

    assert (held.state, held.held_xids, held.resets) == ("Unhealthy", (48, 79), 1)


def test_a_restarted_agent_keeps_an_unclassified_xid_for_a_full_quiet_window():
    published = GpuVerdict(index=0, uuid="GPU-x", state=HealthState.DEGRADED, reason="Xid999",
                           message="XID 999")
    memory = restore_memory(published, now=1000, rebooted=False, settings=SETTINGS)

    held, memory = assess(h100(), now=1059, memory=memory)
    for now in (1061, 1062, 1063):
        released, memory = assess(h100(), now=now, memory=memory)

    assert (held.state, released.state) == (HealthState.DEGRADED, HealthState.HEALTHY)


@pytest.mark.parametrize("xid", [63, 92, 94, 79, 48])
def test_the_device_plugin_withdraws_the_gpu_for_every_xid_it_does_not_skip(xid):
    verdict, _ = assess(h100(), xids=[xid])

    assert verdict.device_plugin_xid == xid


@pytest.mark.parametrize("xid", [13, 31, 43, 45, 68, 109])
def test_the_device_plugin_ignores_the_xids_it_skips(xid):
    verdict, _ = assess(h100(), xids=[xid])

    assert verdict.device_plugin_xid is None


def test_the_node_condition_says_when_the_device_plugin_withdrew_a_gpu_this_agent_finds_usable():
    _, memory = assess(h100(2), xids=[63], now=0)
    healthy_here, _ = assess(h100(2), now=1, memory=memory)  # 63 is informational here

    node = summarize_node([verdict(0), verdict(1), healthy_here])

    assert (node.condition_status, node.reason) == ("True", "AllGPUsHealthy")
    assert node.message == (
        "3 of 3 GPUs healthy; the NVIDIA device plugin has withdrawn GPU 2 (since XID 63 (memory "
        "row remap or page retirement recorded)) from allocatable nvidia.com/gpu although this "
        "agent finds it usable; it offers it again only when the device plugin pod restarts")


def test_no_device_plugin_no_note():
    alone = GpuHealthSettings(device_plugin_skipped_xids=None)

    verdict, _ = assess(h100(), xids=[63], settings=alone)

    assert verdict.device_plugin_xid is None


def verdict(index: int, state: str = "Healthy", reason: str = "Healthy", fatal: bool = False,
            message: str = "no faults") -> GpuVerdict:
    return GpuVerdict(index=index, uuid=f"GPU-{index}", state=HealthState(state), reason=reason,
                      message=message, fatal=fatal)


def test_a_node_with_all_gpus_healthy():
    node = summarize_node([verdict(i) for i in range(8)])

    assert (node.condition_status, node.reason, node.message) == ("True", "AllGPUsHealthy",
                                                                  "8 of 8 GPUs healthy")
    assert (node.state, node.taint_reason, node.healthy_gpus) == ("Healthy", None, 8)


def test_an_unhealthy_gpu_sets_the_condition_false_naming_the_gpu_and_the_fault():
    gpus = [verdict(i) for i in range(8)]
    gpus[3] = verdict(3, "Unhealthy", "Xid79", fatal=True, message="XID 79 (GPU has fallen off "
                                                                   "the bus)")
    node = summarize_node(gpus)

    assert (node.condition_status, node.reason, node.taint_reason, node.fatal) == (
        "False", "Xid79OnGPU3", "Xid79", True)
    assert node.message == ("7 of 8 GPUs healthy; GPU 3 (GPU-3) Unhealthy: XID 79 (GPU has "
                            "fallen off the bus)")


def test_degraded_gpus_keep_the_condition_true_and_add_no_taint():
    node = summarize_node([verdict(0), verdict(1, "Degraded", "ThermalSlowdown")])

    assert (node.state, node.condition_status, node.reason, node.taint_reason) == (
        "Degraded", "True", "ThermalSlowdownOnGPU1", None)


def test_the_worst_gpu_names_the_node_fault_fatal_first():
    node = summarize_node([verdict(0, "Degraded", "ThermalSlowdown"),
                           verdict(1, "Unhealthy", "RowRemapPending"),
                           verdict(2, "Unhealthy", "UncorrectableECC", fatal=True)])

    assert (node.reason, node.taint_reason, node.fatal) == ("UncorrectableECCOnGPU2",
                                                            "UncorrectableECC", True)
    assert node.message.index("GPU 2") < node.message.index("GPU 1") < node.message.index("GPU 0")


def test_a_node_without_gpus_is_unknown():
    node = summarize_node([])

    assert (node.condition_status, node.reason) == ("Unknown", "NoGPUsFound")


def test_settings_reject_an_xid_in_two_classes_naming_both_lists():
    with pytest.raises(ValidationError, match="reboot_xids and application_xids both list XID 79"):
        GpuHealthSettings(reboot_xids=[79], application_xids=[13, 79])


def test_settings_reject_unknown_fields():
    with pytest.raises(ValidationError, match="quiet_window"):
        GpuHealthSettings.model_validate({"quiet_window": 10})
