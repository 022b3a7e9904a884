"""The GPU health rules: XID classes, reading rules, hysteresis and the node summary."""

from __future__ import annotations

import dataclasses

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


@pytest.mark.parametrize("xid", [13, 31, 43, 45, 68, 94])
def test_application_xids_leave_the_gpu_healthy(xid):
    verdict, _ = assess(h100(), xids=[xid])

    assert verdict.state == HealthState.HEALTHY


@pytest.mark.parametrize("xid", [63, 92])
def test_informational_xids_leave_the_gpu_healthy(xid):
    verdict, _ = assess(h100(), xids=[xid])

    assert verdict.state == HealthState.HEALTHY


@pytest.mark.parametrize("xid, words", [
    (48, "double-bit"), (62, "micro-controller"), (64, "could not be recorded"),
    (74, "NVLink"), (79, "fallen off the bus"), (95, "uncontained"), (119, "GSP"), (120, "GSP")])
def test_fatal_xids_make_the_gpu_unhealthy_with_a_reason_naming_the_xid(xid, words):
    verdict, _ = assess(h100(), xids=[xid])

    assert (verdict.state, verdict.fatal, verdict.reason) == (HealthState.UNHEALTHY, True,
                                                             f"Xid{xid}")
    assert f"XID {xid}" in verdict.message and words in verdict.message


def test_an_application_xid_storm_does_not_mark_the_gpu():
    verdict, _ = assess(h100(), xids=[13] * 500 + [43] * 500)

    assert verdict.state == HealthState.HEALTHY


def test_an_unclassified_xid_degrades_by_default_and_can_be_configured_unhealthy():
    degraded, _ = assess(h100(), xids=[999])
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


def test_a_fatal_xid_holds_for_the_quiet_window_then_needs_clean_polls():
    verdict, memory = assess(h100(), xids=[79], now=0)
    timeline = []
    for now in (10, 30, 59, 61, 62, 63, 64):
        verdict, memory = assess(h100(), memory=memory, now=now)
        timeline.append((now, verdict.state))

    # Unhealthy through the 60 s window; after it, three clean polls (61, 62, 63) publish Healthy.
    assert timeline == [(10, "Unhealthy"), (30, "Unhealthy"), (59, "Unhealthy"),
                        (61, "Unhealthy"), (62, "Unhealthy"), (63, "Healthy"), (64, "Healthy")]


def test_a_new_fatal_xid_restarts_the_quiet_window():
    _, memory = assess(h100(), xids=[79], now=0)
    _, memory = assess(h100(), xids=[79], now=50, memory=memory)

    verdict, _ = assess(h100(), now=100, memory=memory)

    assert verdict.state == HealthState.UNHEALTHY


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


def test_a_restarted_agent_keeps_an_xid_verdict_for_a_full_quiet_window():
    published = GpuVerdict(index=0, uuid="GPU-x", state=HealthState.UNHEALTHY, reason="Xid79",
                           message="XID 79", fatal=True)
    memory = restore_memory(published, now=1000)

    held, memory = assess(h100(), now=1059, memory=memory)
    for now in (1061, 1062, 1063):
        released, memory = assess(h100(), now=now, memory=memory)

    assert (held.state, released.state) == (HealthState.UNHEALTHY, HealthState.HEALTHY)


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
    with pytest.raises(ValidationError, match="fatal_xids and application_xids both list XID 79"):
        GpuHealthSettings(fatal_xids=[79], application_xids=[13, 79])


def test_settings_reject_unknown_fields():
    with pytest.raises(ValidationError, match="quiet_window"):
        GpuHealthSettings.model_validate({"quiet_window": 10})
