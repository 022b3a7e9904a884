"""The fake NVML's scenario file: scripting faults from outside a running reader."""

from __future__ import annotations

import pytest

from sovereign.nvml import open_reader
from sovereign_dev.nvml_fake import (
    FakeNvml,
    FakeScenarioError,
    clear_faults,
    healthy_node,
    inject_xid,
    load_scenario,
    set_fault,
    update_gpu,
)


@pytest.fixture
def scenario(healthy_gpus):
    return healthy_gpus(gpus=2, seed="node-b")


def test_a_running_reader_sees_the_file_change(scenario):
    reader = open_reader(fake_scenario=scenario)
    assert reader.read()[1].temperature_c == 34

    update_gpu(scenario, gpu=1, temperature_c=71)

    assert reader.read()[1].temperature_c == 71


@pytest.mark.parametrize("fault, check", [
    ("ecc-dbe", lambda r: r.ecc_uncorrected_volatile == 1 and r.ecc_uncorrected_aggregate == 1),
    ("remap-pending", lambda r: r.remapped_rows.pending and r.remapped_rows.uncorrectable == 1),
    ("remap-failure", lambda r: r.remapped_rows.failure),
    ("thermal-slowdown", lambda r: r.temperature_c == 89 and r.clock_event_reasons & 0x40),
    ("gpu-lost", lambda r: r.lost),
])
def test_fault_presets_change_the_readings(scenario, fault, check):
    reader = open_reader(fake_scenario=scenario)

    set_fault(scenario, gpu=0, fault=fault)

    first, second = reader.read()
    assert check(first)
    assert not second.lost and second.ecc_uncorrected_volatile == 0


def test_clear_faults_makes_every_gpu_healthy_and_drops_pending_xids(scenario):
    set_fault(scenario, gpu=0, fault="remap-failure")
    set_fault(scenario, gpu=1, fault="gpu-lost")
    inject_xid(scenario, gpu=1, xid=79)

    clear_faults(scenario)

    gpus = load_scenario(scenario).gpus
    assert [(g.lost, g.remapped_rows.failure, g.xid_events) for g in gpus] == [
        (False, False, []), (False, False, [])]
    assert [g.uuid for g in gpus] == [g.uuid for g in healthy_node(gpus=2, seed="node-b").gpus]


def test_clear_faults_of_one_gpu_leaves_the_other(scenario):
    set_fault(scenario, gpu=0, fault="ecc-dbe")
    set_fault(scenario, gpu=1, fault="ecc-dbe")

    clear_faults(scenario, gpu=1)

    assert [g.ecc_uncorrected_volatile for g in load_scenario(scenario).gpus] == [1, 0]


def test_yaml_scenarios_are_accepted(tmp_path):
    path = tmp_path / "nvml.yaml"
    path.write_text("gpus:\n  - uuid: GPU-1\n    temperature_c: 50\n")

    reading = open_reader(fake_scenario=path).read()[0]

    assert (reading.identity.uuid, reading.temperature_c) == ("GPU-1", 50)


def test_an_invalid_scenario_names_the_field(tmp_path):
    path = tmp_path / "nvml.yaml"
    path.write_text("gpus:\n  - uuid: GPU-1\n    temprature_c: 50\n")

    with pytest.raises(FakeScenarioError, match=r"nvml.yaml is invalid: gpus\.0\.temprature_c"):
        FakeNvml(path)


def test_a_missing_scenario_says_how_to_create_one(tmp_path):
    with pytest.raises(FakeScenarioError, match="does not exist; create it with"):
        FakeNvml(tmp_path / "missing.json")


def test_an_invalid_rewrite_keeps_the_last_good_scenario(scenario, caplog):
    reader = open_reader(fake_scenario=scenario)
    reader.read()

    scenario.write_text("{gpus: [")

    assert reader.read()[0].temperature_c == 34
    assert "keeping the previous fake NVML scenario" in caplog.text


def test_scripting_names_unknown_faults_and_gpus(scenario):
    with pytest.raises(FakeScenarioError, match="unknown fault 'melted'; choose one of ecc-dbe"):
        set_fault(scenario, gpu=0, fault="melted")
    with pytest.raises(FakeScenarioError, match="has 2 GPUs; gpu=5 is out of range"):
        inject_xid(scenario, gpu=5, xid=79)
    with pytest.raises(FakeScenarioError, match="cannot set \\['temperature_c'\\] on gpu=0"):
        update_gpu(scenario, gpu=0, temperature_c="hot")
