"""The GPU node agent against the real local apiserver, with the fake NVML on a KWOK GPU node.

Each test gets a fresh simulated GPU node shaped like the fleet's (so no other test's node is
tainted) and runs ``sovereign agent`` as a process, the way simulated nodes of the dev cluster
run it, scripting faults through the agent's fake NVML scenario file: XIDs held until a reset
(the fake's recovery action back to None) or a reboot (a new boot ID), and the NoExecute taint
that makes the control plane's taint manager evict every pod that does not tolerate it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from sovereign_dev import fleet
from sovereign_dev.cluster import free_port, wait_until
from sovereign.kube.nodes import (
    GPU_HEALTH_LABEL,
    GPU_HEALTHY_CONDITION,
    GPU_UNHEALTHY_TAINT_KEY,
    Condition,
    GpuHealthRecord,
    GpuNodeMarks,
    NodeForbidden,
    Taint,
    agent_access_manifests,
    emit_node_event,
    publish_gpu_health,
)
from sovereign_dev.nvml_fake import (
    clear_faults,
    healthy_node,
    inject_xid,
    set_driver,
    set_fault,
    update_gpu,
    write_scenario,
)

WAIT = 90  # seconds; generous, the machine is shared


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture
def make_gpu_node(api_client):
    """Create fresh KWOK GPU nodes shaped like the fleet's first GPU group; delete them after."""
    core = client.CoreV1Api(api_client)
    created: list[str] = []

    def make() -> str:
        config = fleet.load()
        group = next(g for g in config["groups"] if "gpu" in g)
        prefix = f"gpu-agent-{uuid.uuid4().hex[:6]}"
        (node,) = fleet.nodes({**config, "groups": [{**group, "prefix": prefix, "count": 1}]})
        core.create_node(node)
        name = node["metadata"]["name"]
        created.append(name)
        wait_until(lambda: condition_of(api_client, name, "Ready").get("status") == "True",
                   timeout=WAIT, message=f"KWOK to make node {name} Ready")
        return name

    yield make
    for name in created:
        core.delete_node(name)


@pytest.fixture
def gpu_node(make_gpu_node) -> str:
    return make_gpu_node()


@pytest.fixture
def scenario(tmp_path, gpu_node) -> Path:
    path = tmp_path / "nvml.json"
    write_scenario(path, healthy_node(seed=gpu_node))
    return path


@dataclass
class Agent:
    """One ``sovereign agent`` process of a test."""

    process: subprocess.Popen
    port: int
    log: Path

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """Scrape /metrics: {(sample name, frozenset of label items): value}.

        Read line by line, as Prometheus reads it: prometheus_client's own parser would rename
        dcgm-exporter's counters (DCGM_FI_DEV_PCIE_REPLAY_COUNTER) to <name>_total.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = {}
        for line in text.splitlines():
            match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if match:
                labels = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or "")
                samples[(match.group(1), frozenset(labels))] = float(match.group(3))
        return samples

    def value(self, name: str, **labels: str) -> float | None:
        wanted = set(labels.items())
        return next((v for (n, items), v in self.metrics().items()
                     if n == name and wanted <= items), None)

    def polls(self) -> float:
        return self.value("sovereign_gpu_agent_polls_total") or 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def start_agent(cluster, gpu_node, scenario, tmp_path):
    """Start ``sovereign agent`` for ``gpu_node`` with short timings; stop it after the test."""
    agents: list[Agent] = []

    def start(*, xid_quiet_window_s: float = 8, **options: Any) -> Agent:
        config = tmp_path / f"agent-{len(agents)}.yaml"
        config.write_text(yaml.safe_dump({
            "poll_interval_s": 0.5, "xid_settle_s": 0.2, "resync_interval_s": 2, **options,
            "health": {"xid_quiet_window_s": xid_quiet_window_s, "recovery_clean_polls": 2}}))
        port = free_port()
        log = tmp_path / f"agent-{len(agents)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "sovereign", "agent", "--node", gpu_node,
                 "--kubeconfig", cluster.kubeconfig, "--config", str(config),
                 "--fake-nvml", str(scenario), "--metrics-address", "127.0.0.1",
                 "--metrics-port", str(port)],
                stdout=out, stderr=subprocess.STDOUT)
        agent = Agent(process=process, port=port, log=log)
        agents.append(agent)
        # Up once it has finished a poll: metrics served, node read, NVML read.
        wait_until(lambda: _alive(agent) and agent.polls() >= 1, timeout=WAIT,
                   message=f"the agent to finish its first poll (log: {log})")
        return agent

    yield start
    for agent in agents:
        agent.stop()


def _alive(agent: Agent) -> bool:
    if agent.process.poll() is not None:
        raise AssertionError(f"agent exited with {agent.process.returncode}:\n"
                             f"{agent.log.read_text()}")
    return True


# -- helpers --------------------------------------------------------------------------------------

def node_of(api_client, name: str) -> dict:
    return api_client.sanitize_for_serialization(client.CoreV1Api(api_client).read_node(name))


def condition_in(node: dict, kind: str = GPU_HEALTHY_CONDITION) -> dict:
    conditions = node.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def condition_of(api_client, name: str, kind: str = GPU_HEALTHY_CONDITION) -> dict:
    return condition_in(node_of(api_client, name), kind)


def node_with_condition(api_client, name: str, **wanted: str) -> dict | None:
    """The node, if its GPUHealthy condition has the ``wanted`` fields; else None."""
    node = node_of(api_client, name)
    condition = condition_in(node)
    return node if all(condition.get(k) == v for k, v in wanted.items()) else None


def our_taints(api_client, name: str) -> list[dict]:
    taints = node_of(api_client, name).get("spec", {}).get("taints") or []
    return [{k: t[k] for k in ("key", "value", "effect")} for t in taints
            if t["key"] == GPU_UNHEALTHY_TAINT_KEY]


def events_about(api_client, name: str, reason: str) -> list[dict]:
    events = client.CoreV1Api(api_client).list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name},reason={reason}")
    return [api_client.sanitize_for_serialization(e) for e in events.items]


def wait_for_lease_renewals(api_client, node: str, *, count: int) -> None:
    """Wait until KWOK has renewed the node's Lease ``count`` times (its heartbeat in lease mode)."""
    leases = client.CoordinationV1Api(api_client)
    seen = set()

    def renewed() -> bool:
        seen.add(leases.read_namespaced_lease(node, "kube-node-lease").spec.renew_time)
        return len(seen) > count

    wait_until(renewed, timeout=WAIT, interval=1, message=f"{count} lease renewals of {node}")


def uuid_of(node: str, gpu: int) -> str:
    return healthy_node(seed=node).gpus[gpu].uuid


def wait_healthy(api_client, node: str) -> None:
    wait_until(lambda: condition_of(api_client, node).get("reason") == "AllGPUsHealthy"
               and not our_taints(api_client, node), timeout=WAIT,
               message=f"GPUHealthy=True/AllGPUsHealthy and no taint on {node}")


# -- tests ----------------------------------------------------------------------------------------

def test_xid_79_holds_the_node_past_the_quiet_window_until_the_gpu_is_reset(
        api_client, gpu_node, scenario, start_agent):
    agent = start_agent()
    wait_healthy(api_client, gpu_node)
    settled = agent.polls()
    wait_until(lambda: agent.polls() > settled, timeout=WAIT, message="one more poll")
    writes_before = {part: agent.value("sovereign_gpu_agent_node_writes_total", part=part)
                     for part in ("metadata", "status")}

    inject_xid(scenario, gpu=3, xid=79)

    # One snapshot of the node, taken when the condition turns False (the agent writes the taint
    # and label just before the condition), so a slow machine cannot race the quiet window.
    node = wait_until(lambda: node_with_condition(api_client, gpu_node, status="False"),
                      timeout=WAIT, message="GPUHealthy=False after XID 79")
    condition = condition_in(node)
    assert condition["reason"] == "Xid79OnGPU3"
    assert uuid_of(gpu_node, 3) in condition["message"]
    assert "XID 79 (GPU has fallen off the bus)" in condition["message"]
    assert condition["message"].startswith("7 of 8 GPUs healthy")
    taints = [{k: t[k] for k in ("key", "value", "effect")} for t in node["spec"]["taints"]]
    assert {"key": GPU_UNHEALTHY_TAINT_KEY, "value": "Xid79", "effect": "NoSchedule"} in taints
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints
    assert node["metadata"]["labels"][GPU_HEALTH_LABEL] == "Unhealthy"
    record = GpuHealthRecord.from_node(node)
    assert (record.state, record.healthy, record.total) == ("Unhealthy", 7, 8)
    assert (record.gpus[3].uuid, record.gpus[3].reason, record.gpus[3].fatal) == (
        uuid_of(gpu_node, 3), "Xid79", True)
    unhealthy_events = wait_until(lambda: events_about(api_client, gpu_node, "GPUUnhealthy"),
                                  timeout=WAIT, message="a GPUUnhealthy event")
    assert unhealthy_events[0]["type"] == "Warning"
    assert uuid_of(gpu_node, 3) in unhealthy_events[0]["message"]
    assert "held until the node reboots" in condition["message"]

    # Time alone releases nothing: well past the 8 s quiet window the GPU is still held.
    polls = agent.polls()
    time.sleep(10)
    assert agent.polls() > polls + 5
    assert condition_of(api_client, gpu_node)["reason"] == "Xid79OnGPU3"

    clear_faults(scenario)  # the reset: NVML's recovery action goes back to None

    wait_healthy(api_client, gpu_node)
    assert node_of(api_client, gpu_node)["metadata"]["labels"][GPU_HEALTH_LABEL] == "Healthy"
    recovered = wait_until(lambda: events_about(api_client, gpu_node, "GPURecovered"),
                           timeout=WAIT, message="a GPURecovered event")
    assert "healthy again after Xid79" in recovered[0]["message"]
    # One write of each part per change, not one per poll: down, then up; and the record (an
    # annotation, metadata) once more when the reset is seen, before the clean polls are done.
    assert {part: agent.value("sovereign_gpu_agent_node_writes_total", part=part)
            for part in ("metadata", "status")} == {
        "metadata": writes_before["metadata"] + 3, "status": writes_before["status"] + 2}
    assert GpuHealthRecord.from_node(node_of(api_client, gpu_node)).gpus[3].resets == 1


def test_a_steady_node_costs_no_writes(api_client, gpu_node, start_agent):
    agent = start_agent()
    wait_healthy(api_client, gpu_node)
    before = agent.metrics()
    polls = agent.polls()

    wait_until(lambda: agent.polls() >= polls + 6, timeout=WAIT, message="six more polls")

    after = agent.metrics()
    for part in ("metadata", "status"):
        key = ("sovereign_gpu_agent_node_writes_total", frozenset({("part", part)}))
        assert after[key] == before[key], f"{part} written while nothing changed"


def test_a_removed_taint_comes_back_at_the_next_resync(api_client, gpu_node, scenario,
                                                       start_agent):
    start_agent()
    set_fault(scenario, gpu=2, fault="remap-pending")
    pending = [{"key": GPU_UNHEALTHY_TAINT_KEY, "value": "RowRemapPending",
                "effect": "NoSchedule"}]
    wait_until(lambda: our_taints(api_client, gpu_node) == pending, timeout=WAIT,
               message="the RowRemapPending taint")
    assert condition_of(api_client, gpu_node)["reason"] == "RowRemapPendingOnGPU2"

    node = node_of(api_client, gpu_node)
    client.CoreV1Api(api_client).patch_node(gpu_node, {
        "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
        "spec": {"taints": [t for t in node["spec"]["taints"]
                            if t["key"] != GPU_UNHEALTHY_TAINT_KEY]}},
        _content_type="application/merge-patch+json")
    assert our_taints(api_client, gpu_node) == []

    wait_until(lambda: our_taints(api_client, gpu_node) == pending, timeout=WAIT,
               message="the agent to put its taint back")


def test_without_nvml_the_condition_is_unknown_and_the_taint_stays(api_client, gpu_node,
                                                                   scenario, start_agent):
    agent = start_agent()
    set_fault(scenario, gpu=1, fault="remap-pending")
    wait_until(lambda: condition_of(api_client, gpu_node).get("reason")
               == "RowRemapPendingOnGPU1", timeout=WAIT, message="RowRemapPendingOnGPU1")

    set_driver(scenario, loaded=False)

    wait_until(lambda: condition_of(api_client, gpu_node).get("status") == "Unknown",
               timeout=WAIT, message="GPUHealthy=Unknown without NVML")
    condition = condition_of(api_client, gpu_node)
    assert (condition["reason"], condition["message"]) == ("NVMLUnavailable",
                                                           "NVML is unavailable: Driver Not Loaded")
    assert node_of(api_client, gpu_node)["metadata"]["labels"][GPU_HEALTH_LABEL] == "Unknown"
    # Nothing new is known about the GPUs, so the last known fault keeps its taint.
    assert our_taints(api_client, gpu_node)[0]["value"] == "RowRemapPending"
    assert agent.value("sovereign_gpu_agent_nvml_up") == 0
    assert wait_until(lambda: events_about(api_client, gpu_node, "NVMLUnavailable"),
                      timeout=WAIT, message="an NVMLUnavailable event")
    polls = agent.polls()
    wait_until(lambda: agent.polls() >= polls + 4, timeout=WAIT, message="four more polls")
    assert condition_of(api_client, gpu_node) == condition  # the outage is written once

    set_driver(scenario, loaded=True)

    wait_until(lambda: condition_of(api_client, gpu_node).get("reason")
               == "RowRemapPendingOnGPU1", timeout=WAIT, message="the fault back once NVML is")


def test_gpu_condition_survives_kwok_status_updates_and_agent_restarts(
        api_client, gpu_node, scenario, start_agent):
    # A quiet window longer than the test: only KWOK could take the mark away.
    agent = start_agent(xid_quiet_window_s=3600)
    inject_xid(scenario, gpu=0, xid=48)
    node = wait_until(lambda: node_with_condition(api_client, gpu_node, reason="Xid48OnGPU0"),
                      timeout=WAIT, message="GPUHealthy=False/Xid48OnGPU0")
    marked = condition_in(node)
    agent.stop()  # from here on only KWOK (and the control plane) write the node

    # KWOK (lease mode, as the harness runs it) patches node status through its node-initialize
    # stage, a strategic merge of its own conditions, whenever Ready is not True. Provoke that.
    core = client.CoreV1Api(api_client)
    for _ in range(3):
        core.patch_node_status(gpu_node, {"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "TestFlip",
             "message": "flipped by the GPU agent test"}]}},
            _content_type="application/strategic-merge-patch+json")
        wait_until(lambda: condition_of(api_client, gpu_node, "Ready").get("status") == "True",
                   timeout=WAIT, message="KWOK to patch the node Ready again")
        assert condition_of(api_client, gpu_node) == marked
    # And through lease heartbeats: two renewals of the node's Lease.
    wait_for_lease_renewals(api_client, gpu_node, count=2)
    assert condition_of(api_client, gpu_node) == marked
    assert our_taints(api_client, gpu_node) == [
        {"key": GPU_UNHEALTHY_TAINT_KEY, "value": "Xid48", "effect": "NoSchedule"}]

    # A restarted agent (same boot) keeps holding the XID, past its quiet window, until a reset.
    restarted = start_agent(xid_quiet_window_s=1)
    assert restarted.value("sovereign_gpu_health", gpu="0", state="Unhealthy") == 1
    polls = restarted.polls()
    wait_until(lambda: restarted.polls() > polls + 6, timeout=WAIT, message="six more polls")
    assert condition_of(api_client, gpu_node)["reason"] == "Xid48OnGPU0"
    clear_faults(scenario)
    wait_healthy(api_client, gpu_node)


def _set_boot_id(api_client, node: str, boot_id: str) -> None:
    client.CoreV1Api(api_client).patch_node_status(
        node, {"status": {"nodeInfo": {"bootID": boot_id}}},
        _content_type="application/strategic-merge-patch+json")


def test_a_reboot_releases_what_only_a_reboot_can_clear(api_client, gpu_node, scenario,
                                                        start_agent):
    _set_boot_id(api_client, gpu_node, "boot-1")
    # A driver without the recovery-action field: the reboot is the only signal there is.
    update_gpu(scenario, gpu=2, recovery_action=None)
    agent = start_agent()
    inject_xid(scenario, gpu=2, xid=62)
    wait_until(lambda: node_with_condition(api_client, gpu_node, reason="Xid62OnGPU2"),
               timeout=WAIT, message="GPUHealthy=False/Xid62OnGPU2")
    assert GpuHealthRecord.from_node(node_of(api_client, gpu_node)).boot_id == "boot-1"
    agent.stop()

    clear_faults(scenario)  # a reset no reading shows: the same boot would still hold it
    _set_boot_id(api_client, gpu_node, "boot-2")
    start_agent()

    wait_healthy(api_client, gpu_node)
    cleared = wait_until(lambda: events_about(api_client, gpu_node, "GPUFaultsClearedByReboot"),
                         timeout=WAIT, message="a GPUFaultsClearedByReboot event")
    assert cleared[0]["message"].endswith("cleared for GPUs 2")


def test_a_fatal_fault_with_noexecute_evicts_every_pod_that_does_not_tolerate_it(
        api_client, gpu_node, scenario, start_agent, namespace):
    core = client.CoreV1Api(api_client)
    tolerates = [{"key": GPU_UNHEALTHY_TAINT_KEY, "operator": "Exists", "effect": "NoExecute"}]
    pods = {"plain": [], "tolerating": tolerates,
            "gpu-only": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    for name, tolerations in pods.items():
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": name},
            "spec": {"nodeName": gpu_node, "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "example:1"}]}})
    for name in pods:
        wait_until(lambda n=name: core.read_namespaced_pod(n, namespace).status.phase == "Running",
                   timeout=WAIT, message=f"pod {name} Running")
    start_agent(fatal_taint_effect="NoExecute")

    inject_xid(scenario, gpu=5, xid=79)

    wait_until(lambda: {"key": GPU_UNHEALTHY_TAINT_KEY, "value": "Xid79", "effect": "NoExecute"}
               in our_taints(api_client, gpu_node), timeout=WAIT, message="the NoExecute taint")

    def evicted(name: str) -> bool:
        try:
            pod = core.read_namespaced_pod(name, namespace)
        except client.ApiException as err:
            return err.status == 404
        return pod.metadata.deletion_timestamp is not None

    wait_until(lambda: evicted("plain") and evicted("gpu-only"), timeout=WAIT,
               message="the taint manager to evict the pods without a toleration")
    survivor = core.read_namespaced_pod("tolerating", namespace)
    assert (survivor.metadata.deletion_timestamp, survivor.status.phase) == (None, "Running")
    deletions = [e for e in core.list_namespaced_event(namespace).items
                 if e.reason == "TaintManagerEviction"]
    assert {e.involved_object.name for e in deletions} >= {"plain", "gpu-only"}


def test_metrics_have_dcgm_exporter_names_and_labels(gpu_node, scenario, start_agent):
    agent = start_agent()
    inject_xid(scenario, gpu=1, xid=13)  # an application error: counted, GPU stays healthy
    wait_until(lambda: agent.value("sovereign_gpu_xid_total", gpu="1", xid="13") == 1,
               timeout=WAIT, message="XID 13 counted")

    metrics = agent.metrics()
    gpu1 = {"gpu": "1", "UUID": uuid_of(gpu_node, 1), "pci_bus_id": "00000000:28:00.0",
            "device": "nvidia1", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": gpu_node,
            "DCGM_FI_DRIVER_VERSION": "580.95.05"}
    expected = {
        "DCGM_FI_DEV_GPU_TEMP": 34, "DCGM_FI_DEV_POWER_USAGE": 72, "DCGM_FI_DEV_GPU_UTIL": 0,
        "DCGM_FI_DEV_FB_USED": 0, "DCGM_FI_DEV_FB_FREE": 81559, "DCGM_FI_DEV_FB_TOTAL": 81559,
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0,
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 0, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": 0,
        "DCGM_FI_DEV_SLOWDOWN_TEMP": 89, "DCGM_FI_DEV_SHUTDOWN_TEMP": 92,
        "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": 700, "DCGM_FI_DEV_ROW_REMAP_PENDING": 0,
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0,
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 0,
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": 0, "DCGM_FI_DEV_MIG_MODE": 0,
    }
    for name, value in expected.items():
        assert metrics.get((name, frozenset(gpu1.items()))) == value, name
    xid_labels = {**gpu1, "err_code": "13", "err_msg": "graphics engine exception in an application"}
    assert metrics.get(("DCGM_FI_DEV_XID_ERRORS", frozenset(xid_labels.items()))) == 13
    temperatures = [labels for name, labels in metrics if name == "DCGM_FI_DEV_GPU_TEMP"]
    assert sorted(dict(labels)["gpu"] for labels in temperatures) == [str(i) for i in range(8)]
    # H100s retire no pages (NotSupported): no sample, as dcgm-exporter does.
    assert not [name for name, _ in metrics if name == "DCGM_FI_DEV_RETIRED_SBE"]
    health = {state: agent.value("sovereign_gpu_health", gpu="1", UUID=uuid_of(gpu_node, 1),
                                 state=state) for state in ("Healthy", "Degraded", "Unhealthy")}
    assert health == {"Healthy": 1, "Degraded": 0, "Unhealthy": 0}
    assert agent.value("sovereign_gpu_xid_total", gpu="1", UUID=uuid_of(gpu_node, 1),
                       xid="13") == 1
    assert agent.value("sovereign_gpu_agent_nvml_up") == 1


def test_rbac_lets_the_agent_mark_only_its_own_node(api_client, cluster, namespace,
                                                    make_gpu_node):
    own, other = make_gpu_node(), make_gpu_node()
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "gpu-agent"}})
    manifests = agent_access_manifests(name=f"gpu-agent-{namespace}",
                                       service_account="gpu-agent", namespace=namespace)
    applied = _apply(api_client, manifests)
    try:
        agent_api = _pod_bound_client(api_client, cluster, namespace=namespace, node=own)
        marks = GpuNodeMarks(
            condition=Condition(status="False", reason="Xid79OnGPU0", message="test"),
            label="Unhealthy", record=GpuHealthRecord(state="Unhealthy", healthy=7, total=8),
            taint=Taint(value="Xid79", effect="NoSchedule"))

        wait_until(lambda: publish_gpu_health(agent_api, node_name=own, marks=marks),
                   timeout=WAIT, message="the agent's ServiceAccount to mark its own node")
        emit_node_event(agent_api, node_name=own, reason="GPUUnhealthy", message="test",
                        warning=True)

        assert condition_of(api_client, own)["reason"] == "Xid79OnGPU0"
        assert our_taints(api_client, own)[0]["value"] == "Xid79"
        # A dry run goes through admission without writing: wait for the policy to be in force.
        wait_until(lambda: _dry_run_status(agent_api, other) == 403, timeout=WAIT,
                   message="the admission policy to refuse another node")
        with pytest.raises(NodeForbidden, match="may only change the node its own pod runs on"):
            publish_gpu_health(agent_api, node_name=other, marks=marks)
        assert not our_taints(api_client, other)
        with pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(agent_api).patch_node(
                own, {"spec": {"taints": []}}, _content_type="application/merge-patch+json")
        assert refused.value.status == 403
        assert f"may only change the {GPU_UNHEALTHY_TAINT_KEY} taint" in str(refused.value.body)
    finally:
        _delete(api_client, applied)


def _dry_run_status(agent_api, node: str) -> int:
    try:
        client.CoreV1Api(agent_api).patch_node(
            node, {"metadata": {"labels": {GPU_HEALTH_LABEL: "Unknown"}}}, dry_run="All",
            _content_type="application/merge-patch+json")
    except client.ApiException as err:
        return err.status
    return 200


def _pod_bound_client(api_client, cluster, *, namespace: str, node: str) -> client.ApiClient:
    """A client with a token bound to a pod on ``node``, as a DaemonSet pod of the agent has."""
    core = client.CoreV1Api(api_client)
    pod = core.create_namespaced_pod(namespace, {
        "metadata": {"name": "gpu-agent"},
        "spec": {"nodeName": node, "serviceAccountName": "gpu-agent",
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "agent", "image": "sovereign:test"}]}})
    token = core.create_namespaced_service_account_token("gpu-agent", namespace, {
        "spec": {"expirationSeconds": 3600, "boundObjectRef": {
            "apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
            "uid": pod.metadata.uid}}}).status.token
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def _apply(api_client, manifests: list[dict]) -> list[dict]:
    for manifest in manifests:
        _api_for(api_client, manifest)("create", manifest)
    return manifests


def _delete(api_client, manifests: list[dict]) -> None:
    for manifest in manifests:
        _api_for(api_client, manifest)("delete", manifest)


def _api_for(api_client, manifest: dict):
    """create/delete for the kinds of agent_access_manifests, cluster-scoped or namespaced."""
    kind = manifest["kind"]
    api = (client.AdmissionregistrationV1Api(api_client) if "Admission" in kind
           else client.RbacAuthorizationV1Api(api_client))
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in kind).lstrip("_")
    namespace = manifest["metadata"].get("namespace")

    def call(verb: str, body: dict):
        if namespace:
            method = getattr(api, f"{verb}_namespaced_{snake}")
            return (method(namespace, body) if verb == "create"
                    else method(body["metadata"]["name"], namespace))
        method = getattr(api, f"{verb}_{snake}")
        return method(body) if verb == "create" else method(body["metadata"]["name"])

    return call
