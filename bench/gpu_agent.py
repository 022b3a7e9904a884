"""GPU node agent benchmarks, against a local control plane with the fake NVML.

- CPU and memory of ``sovereign agent --fake-nvml ... --interval 1`` watching eight scripted GPUs
  for ``STEADY_SECONDS`` (``SOVEREIGN_BENCH_AGENT_SECONDS`` changes it): CPU as a share of one
  core per ``CPU_WINDOW`` seconds (utime + stime from ``/proc/<pid>/stat``), resident memory
  (``VmRSS`` of ``/proc/<pid>/status``) once a second;
- the time one ``/metrics`` scrape takes (``SCRAPES`` of them, body read in full);
- from a scripted XID 79 (written into the fake NVML file) to the agent's taint on the node, seen
  through a watch of the node, ``FAULTS`` times;
- with ``sovereign run`` and a one-model stack (``GpuStack``): from a scripted XID 79 on the node
  serving the model to the stack's ``GPUHealthy=False``, to the vLLM pod's eviction and to its
  replacement Running on the other node, ``FAULTS`` times (the fault is cleared in between).

The nodes, agents and stack come from ``sovereign_dev.gpu_scenario``, shared with
``tests/integration/test_gpu_reaction.py``.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from bench.result import Result
from sovereign_dev import build
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.gpu_scenario import (
    FAULT_CONFIG, WAIT, AgentProcess, GpuNodes, GpuStack, node_condition, tainted, time_until_node)
from sovereign_dev.scenario import OperatorProcess
from sovereign.kube.nodes import GPU_HEALTHY_CONDITION

STEADY_SECONDS = float(os.environ.get("SOVEREIGN_BENCH_AGENT_SECONDS", 60))
CPU_WINDOW = 5.0
SCRAPES = 200
FAULTS = 5


def run() -> list[Result]:
    build.ensure_all(["etcd", "kubernetes", "kwok"])
    with tempfile.TemporaryDirectory(prefix="bench-gpu-agent-") as tmp, \
            DevCluster(workdir=Path(tmp) / "cluster", progress=False) as cluster:
        api = cluster.api_client()
        try:
            return _agent_alone(cluster, api, Path(tmp)) + _with_operator(cluster, api, Path(tmp))
        finally:
            api.close()


def _agent_alone(cluster: DevCluster, api: client.ApiClient, workdir: Path) -> list[Result]:
    nodes = GpuNodes(api)
    try:
        node = nodes.create(region="me-central-1")
        agent = AgentProcess(kubeconfig=cluster.kubeconfig, node=node, workdir=workdir, interval=1.0,
                             config=FAULT_CONFIG)
        try:
            return [*_steady(agent), _scrapes(agent), _fault_to_taint(api, agent)]
        finally:
            agent.stop()
    finally:
        nodes.delete()


def _with_operator(cluster: DevCluster, api: client.ApiClient, workdir: Path) -> list[Result]:
    core = client.CoreV1Api(api)
    namespace = "bench-gpu"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_until(lambda: core.read_namespaced_service_account("default", namespace), timeout=WAIT)
    operator = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace],
                               log=workdir / "operator.log", resync_seconds=60).start()
    try:
        with GpuStack(api, kubeconfig=cluster.kubeconfig, namespace=namespace, workdir=workdir,
                      agent_config=FAULT_CONFIG) as stack:
            wait_until(lambda: stack.condition().get("status") == "True" and stack.serving_node(),
                       timeout=WAIT, message="GPUHealthy=True and the vLLM pod Running")
            return _fault_to_stack(stack)
    finally:
        operator.stop()


def _steady(agent: AgentProcess) -> list[Result]:
    """CPU per window and RSS per second while nothing changes (after one window of warm-up)."""
    cpu = Result(f"agent CPU, 1 s poll, 8 fake GPUs ({CPU_WINDOW:g} s windows, % of one core)", "%")
    rss = Result("agent resident memory (VmRSS, each second)", "MiB")
    time.sleep(CPU_WINDOW)
    began = time.monotonic()
    while time.monotonic() - began < STEADY_SECONDS:
        window_start, used_start = time.monotonic(), agent.cpu_seconds()
        while time.monotonic() - window_start < CPU_WINDOW:
            rss.samples.append(round(agent.rss_mib(), 1))
            time.sleep(1)
        used = agent.cpu_seconds() - used_start
        cpu.samples.append(round(100 * used / (time.monotonic() - window_start), 2))
    return [cpu, rss]


def _scrapes(agent: AgentProcess) -> Result:
    scrape = Result(f"/metrics scrape, 8 GPUs (median of {SCRAPES})", "ms")
    for _ in range(SCRAPES):
        began = time.perf_counter()
        agent.scrape()
        scrape.samples.append(round(1000 * (time.perf_counter() - began), 2))
    return scrape


def _fault_to_taint(api: client.ApiClient, agent: AgentProcess) -> Result:
    taint = Result("scripted XID 79 -> agent's taint on the node (agent defaults, 1 s poll)", "s")
    core = client.CoreV1Api(api)
    for _ in range(FAULTS):
        began = time.monotonic()
        agent.inject_xid(gpu=3, xid=79)
        taint.samples.append(round(time_until_node(api, agent.node, lambda n: tainted(n) == "Xid79",
                                                   started=began), 2))
        agent.clear_faults()
        wait_until(lambda: tainted(core.read_node(agent.node)) is None
                   and node_condition(core.read_node(agent.node), GPU_HEALTHY_CONDITION) == "True",
                   timeout=WAIT, message=f"{agent.node} healthy again")
    return taint


def _fault_to_stack(stack: GpuStack) -> list[Result]:
    """From a scripted XID 79 on the node serving the model to what the operator does about it;
    the fault is then cleared and the next one scripted on the node now serving the model."""
    condition = Result("scripted XID 79 -> stack GPUHealthy=False (agent + operator)", "s")
    evicted = Result("scripted XID 79 -> vLLM pod evicted", "s")
    moved = Result("scripted XID 79 -> replacement vLLM pod Running on a healthy node", "s")
    for _ in range(FAULTS):
        node = wait_until(stack.serving_node, timeout=WAIT, message="one Running vLLM pod")
        (pod,) = [p.metadata.name for p in stack.model_pods()]
        began = time.monotonic()
        stack.agents[node].inject_xid(gpu=3, xid=79)
        _milestones(began, [
            (condition, lambda: stack.condition().get("status") == "False"),
            (evicted, lambda: pod not in [p.metadata.name for p in stack.model_pods()]),
            (moved, lambda: stack.serving_node() not in (None, node)),
        ])
        stack.agents[node].clear_faults()
        wait_until(lambda: stack.condition().get("status") == "True", timeout=WAIT,
                   message=f"stack GPUHealthy=True again after {node} recovered")
    return [condition, evicted, moved]


def _milestones(began: float, checks: list[tuple[Result, Callable[[], bool]]]) -> None:
    """Add to each result the seconds from ``began`` until its check first holds; the checks
    are polled together."""
    waiting = list(checks)
    while waiting:
        if time.monotonic() - began > WAIT:
            raise TimeoutError(f"not reached within {WAIT}s: {', '.join(r.measure for r, _ in waiting)}")
        for result, check in list(waiting):
            if check():
                result.samples.append(round(time.monotonic() - began, 2))
                waiting.remove((result, check))
        time.sleep(0.05)
