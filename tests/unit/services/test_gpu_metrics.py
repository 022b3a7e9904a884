"""The agent's exposition against dcgm-exporter's own definition of its metrics, field by field.

``DEFAULT_COUNTERS`` is dcgm-exporter's ``etc/default-counters.csv`` at tag 4.5.3-4.8.2 (commit
691c92762eb5), the rows that define a field (commented-out rows included: they are dcgm-exporter's
definitions of fields it leaves off by default). The file is not on any package registry this
project's CI reaches (the Go proxy refuses the module), so the rows are written out here; set
``SOVEREIGN_DCGM_COUNTERS`` to a checkout's file to compare against another version instead.
The labels follow its exposition template (internal/pkg/rendermetrics/render_metrics.go) and
the XID collector (err_code, err_msg).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sovereign.nvml.readings import XidEvent
from sovereign.services.gpu_metrics import DCGM_FIELDS, XID_FIELD, GpuMetrics
from sovereign_dev.nvml_fake import set_fault, update_gpu

DEFAULT_COUNTERS = """\
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_MEM_CLOCK, gauge, Memory clock frequency (in MHz).
DCGM_FI_DEV_MEMORY_TEMP, gauge, Memory temperature (in C).
DCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).
DCGM_FI_DEV_POWER_USAGE,              gauge, Power draw (in W).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).
DCGM_FI_DEV_PCIE_REPLAY_COUNTER, counter, Total number of PCIe retries.
DCGM_FI_DEV_GPU_UTIL,      gauge, GPU utilization (in %).
DCGM_FI_DEV_MEM_COPY_UTIL, gauge, Memory utilization (in %).
DCGM_FI_DEV_ENC_UTIL,      gauge, Encoder utilization (in %).
DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).
DCGM_FI_DEV_XID_ERRORS,              gauge,   Value of the last XID error encountered.
DCGM_FI_DEV_FB_FREE, gauge, Framebuffer memory free (in MiB).
DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).
DCGM_FI_DEV_FB_RESERVED, gauge, Framebuffer memory reserved (in MiB).
# DCGM_FI_DEV_ECC_SBE_VOL_TOTAL, counter, Total number of single-bit volatile ECC errors.
# DCGM_FI_DEV_ECC_DBE_VOL_TOTAL, counter, Total number of double-bit volatile ECC errors.
# DCGM_FI_DEV_ECC_SBE_AGG_TOTAL, counter, Total number of single-bit persistent ECC errors.
# DCGM_FI_DEV_ECC_DBE_AGG_TOTAL, counter, Total number of double-bit persistent ECC errors.
# DCGM_FI_DEV_RETIRED_SBE,     counter, Total number of retired pages due to single-bit errors.
# DCGM_FI_DEV_RETIRED_DBE,     counter, Total number of retired pages due to double-bit errors.
# DCGM_FI_DEV_RETIRED_PENDING, counter, Total number of pages pending retirement.
# DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, counter, Total number of NVLink flow-control CRC errors.
# DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL, counter, Total number of NVLink data CRC errors.
# DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,   counter, Total number of NVLink retries.
# DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL, counter, Total number of NVLink recovery errors.
DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL,            counter, Total number of NVLink bandwidth counters for all lanes.
DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS, counter, Number of remapped rows for uncorrectable errors
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS,   counter, Number of remapped rows for correctable errors
DCGM_FI_DEV_ROW_REMAP_FAILURE,           gauge,   Whether remapping of rows has failed
DCGM_FI_DRIVER_VERSION,        label, Driver Version
DCGM_FI_PROF_GR_ENGINE_ACTIVE,   gauge, Ratio of time the graphics engine is active.
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, gauge, Ratio of cycles the tensor (HMMA) pipe is active.
DCGM_FI_PROF_DRAM_ACTIVE,        gauge, Ratio of cycles the device memory interface is active sending or receiving data.
"""
#: Default fields the agent does not expose, and why: NVML alone cannot give them the way DCGM
#: does (profiling counters need DCGM's profiling module, NVLink bandwidth its own counters), or
#: they describe vGPU hosts.
NOT_EXPOSED = {
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
}
LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
          "DCGM_FI_DRIVER_VERSION"]
SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


def upstream_fields() -> dict[str, tuple[str, str]]:
    """Field -> (metric type, help), from the file's defining rows, commented or not."""
    text = DEFAULT_COUNTERS
    if os.environ.get("SOVEREIGN_DCGM_COUNTERS"):
        text = Path(os.environ["SOVEREIGN_DCGM_COUNTERS"]).read_text()
    fields = {}
    for line in text.splitlines():
        row = line.lstrip("# ").split(",", 2)
        if len(row) == 3 and row[0].strip().startswith("DCGM_FI_"):
            fields[row[0].strip()] = (row[1].strip(), row[2].strip())
    return fields


@pytest.fixture
def scenario(healthy_gpus):
    return healthy_gpus(gpus=2, seed="dcgm")


@pytest.fixture
def exposition(scenario, reader) -> str:
    set_fault(scenario, gpu=1, fault="ecc-dbe")
    update_gpu(scenario, gpu=1, pcie_replay_count=7)
    metrics = GpuMetrics(hostname="gpu-node-1")
    metrics.count_xids([XidEvent(xid=79, gpu_index=1)], reader.identities)
    metrics.observe(readings=reader.read(), verdicts=[], driver_version=reader.driver_version)
    return metrics.exposition()


def families(text: str) -> dict[str, tuple[str, str]]:
    """Family -> (TYPE, HELP) as written in the exposition."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    return {name: (kind, helps[name]) for name, kind in types.items()}


def samples(text: str, name: str) -> list[tuple[list[tuple[str, str]], str]]:
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2))
            found.append((labels, match.group(3)))
    return found


def test_every_exposed_dcgm_field_has_dcgm_exporters_type_and_help(exposition):
    upstream = upstream_fields()
    exposed = families(exposition)
    compared = [f.name for f in (*DCGM_FIELDS, XID_FIELD) if f.name in upstream]

    assert len(compared) >= 25
    assert {name: exposed[name] for name in compared} == {name: upstream[name]
                                                          for name in compared}


def test_every_default_field_is_exposed_or_listed_as_not_exposed(exposition):
    upstream = upstream_fields()
    defaults = {name for name, (kind, _) in upstream.items()
                if kind != "label" and f"# {name}" not in DEFAULT_COUNTERS}

    assert defaults - set(families(exposition)) == NOT_EXPOSED


def test_counters_keep_their_dcgm_names_without_a_total_suffix(exposition):
    exposed = families(exposition)

    assert exposed["DCGM_FI_DEV_PCIE_REPLAY_COUNTER"][0] == "counter"
    assert exposed["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"][0] == "counter"
    assert "DCGM_FI_DEV_PCIE_REPLAY_COUNTER_total" not in exposition
    replays = {dict(labels)["gpu"]: value
               for labels, value in samples(exposition, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER")}
    assert replays == {"0": "0", "1": "7"}


def test_every_gpu_series_carries_dcgm_exporters_labels_in_its_order(exposition, reader):
    uuid = reader.identities[1].uuid
    temperature = samples(exposition, "DCGM_FI_DEV_GPU_TEMP")

    assert [[key for key, _ in labels] for labels, _ in temperature] == [LABELS, LABELS]
    assert temperature[1][0] == [
        ("gpu", "1"), ("UUID", uuid), ("pci_bus_id", "00000000:28:00.0"), ("device", "nvidia1"),
        ("modelName", "NVIDIA H100 80GB HBM3"), ("Hostname", "gpu-node-1"),
        ("DCGM_FI_DRIVER_VERSION", "580.95.05")]


def test_the_xid_gauge_names_the_last_code_and_its_meaning(exposition):
    xids = {dict(labels)["gpu"]: (dict(labels), value)
            for labels, value in samples(exposition, "DCGM_FI_DEV_XID_ERRORS")}

    assert [key for key, _ in samples(exposition, "DCGM_FI_DEV_XID_ERRORS")[0][0]] == \
        [*LABELS, "err_code", "err_msg"]
    assert (xids["1"][0]["err_code"], xids["1"][0]["err_msg"], xids["1"][1]) == (
        "79", "GPU has fallen off the bus", "79")
    assert (xids["0"][0]["err_code"], xids["0"][0]["err_msg"], xids["0"][1]) == (
        "0", "No Error", "0")


def test_prometheus_parses_the_exposition_with_the_same_types(exposition):
    parsed = {family.name: family.type for family in text_string_to_metric_families(exposition)}

    assert parsed["DCGM_FI_DEV_PCIE_REPLAY_COUNTER"] == "counter"
    assert parsed["DCGM_FI_DEV_GPU_TEMP"] == "gauge"
    assert parsed["sovereign_gpu_xid"] == "counter"
