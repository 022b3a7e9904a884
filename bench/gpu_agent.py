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

``GpuNodes`` (fresh KWOK GPU nodes shaped like the fleet's) and ``AgentProcess`` (the agent as
the dev cluster runs it) are shared with ``tests/integration/test_gpu_reaction.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from sovereign.devcluster.scenario import OperatorProcess, delete_stack, stack_conditions
from bench.result import Result
from sovereign.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from sovereign.devcluster import build, fleet
from sovereign.devcluster.cluster import DevCluster, free_port, wait_until
from sovereign.kube.nodes import GPU_HEALTHY_CONDITION, GPU_UNHEALTHY_TAINT_KEY
from sovereign.nvml.fake import clear_faults, healthy_node, inject_xid, write_scenario
from sovereign.render.names import COMPONENT_LABEL, STACK_LABEL

STEADY_SECONDS = float(os.environ.get("SOVEREIGN_BENCH_AGENT_SECONDS", 60))
CPU_WINDOW = 5.0
SCRAPES = 200
FAULTS = 5
#: Agent settings of the fault runs: the shipped ones, except that a cleared XID stops counting
#: after a few seconds instead of five minutes, so one run can script several faults.
FAULT_CONFIG = {"health": {"xid_quiet_window_s": 3, "recovery_clean_polls": 1}}
WAIT = 120
RACK_LABEL = "sovereign.ai/rack"


class GpuNodes:
    """Fresh KWOK GPU nodes, shaped like the fleet's first GPU group but in any region, carrying
    ``labels``; deleted again by ``delete``. Fresh nodes keep a test's taints off shared nodes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.names: list[str] = []

    def create(self, *, region: str, labels: dict[str, str] | None = None) -> str:
        config = fleet.load()
        group = next(g for g in config["groups"] if "gpu" in g)
        prefix = f"gpu-{region.split('-')[0]}-{uuid.uuid4().hex[:6]}"
        group = {**group, "prefix": prefix, "count": 1, "region": region,
                 "zones": [f"{region}a"]}
        (node,) = fleet.nodes({**config, "groups": [group]})
        node["metadata"]["labels"].update(labels or {})
        self.core.create_node(node)
        name = node["metadata"]["name"]
        self.names.append(name)
        wait_until(lambda: _condition(self.core.read_node(name), "Ready") == "True", timeout=WAIT,
                   message=f"KWOK to make node {name} Ready")
        return name

    def delete(self) -> None:
        for name in self.names:
            try:
                self.core.delete_node(name)
            except client.ApiException as err:
                if err.status != 404:
                    raise
        self.names.clear()


class AgentProcess:
    """``sovereign agent`` for one node on a fake NVML scenario file, as a subprocess."""

    def __init__(self, *, kubeconfig: str, node: str, workdir: Path, interval: float = 1.0,
                 config: dict[str, Any] | None = None) -> None:
        self.node = node
        self.scenario = workdir / f"{node}.nvml.json"
        self.log = workdir / f"{node}.agent.log"
        self.port = free_port()
        write_scenario(self.scenario, healthy_node(seed=node))
        config_path = workdir / f"{node}.agent.yaml"
        config_path.write_text(yaml.safe_dump(config or {}))
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sovereign", "agent", "--node", node, "--kubeconfig", kubeconfig,
                 "--config", str(config_path), "--interval", str(interval), "--fake-nvml", str(self.scenario),
                 "--metrics-address", "127.0.0.1", "--metrics-port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self._alive() and self.polls() >= 1, timeout=WAIT,
                   message=f"the agent of {node} to finish its first poll (log: {self.log})")

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the first sample ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return next((s.value for f in text_string_to_metric_families(self.scrape()) for s in f.samples
                     if s.name == name and wanted <= set(s.labels.items())), None)

    def polls(self) -> float:
        return self.value("sovereign_gpu_agent_polls_total") or 0.0

    def inject_xid(self, *, gpu: int, xid: int) -> None:
        inject_xid(self.scenario, gpu=gpu, xid=xid)

    def clear_faults(self) -> None:
        clear_faults(self.scenario)

    def cpu_seconds(self) -> float:
        """utime + stime of the agent so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for agent pid {self.process.pid}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the agent of {self.node} exited with {self.process.returncode}:\n"
                               f"{self.log.read_text(errors='replace')[-4000:]}")
        return True


def tainted(node: client.V1Node) -> str | None:
    """The value of the agent's taint on ``node``, if any."""
    return next((t.value for t in node.spec.taints or [] if t.key == GPU_UNHEALTHY_TAINT_KEY), None)


def time_until_node(api: client.ApiClient, node: str, predicate: Callable[[client.V1Node], bool], *,
                    started: float, timeout: float = WAIT) -> float:
    """Seconds from ``started`` (monotonic) until a watch of ``node`` shows it matching
    ``predicate`` (a function of the V1Node); checks the node as it is first."""
    core = client.CoreV1Api(api)
    current = core.read_node(node)
    if predicate(current):
        return time.monotonic() - started
    stream = watch.Watch()
    try:
        for event in stream.stream(core.list_node, field_selector=f"metadata.name={node}",
                                   resource_version=current.metadata.resource_version,
                                   timeout_seconds=int(timeout)):
            if predicate(event["object"]):
                return time.monotonic() - started
    finally:
        stream.stop()
    raise TimeoutError(f"node {node} did not change as expected within {timeout:.0f}s")


class GpuStack:
    """A stack whose one model takes a whole GPU node per replica, on fresh GPU nodes of its own,
    each watched by a node agent on the fake NVML; a context manager.

    Its Existing pool selects the nodes by a rack label unique to this instance: ``nodes`` in
    me-central-1 (the stack's region; ``add_node`` adds one) and, as a decoy, one in eu-west-1
    (outside it, so the pool refuses it); the model has ``replicas`` replicas. Its weights come
    from a volume store bound to a static volume in me-central-1, so the local cluster needs no
    provisioner. Entering starts the agents and creates the stack; leaving deletes the stack (the
    operator must still run, its finalizer is on it), stops the agents and deletes the nodes and
    the volume.
    """

    def __init__(self, api: client.ApiClient, *, kubeconfig: str, namespace: str, workdir: Path,
                 name: str = "gpu-reaction", nodes: int = 2, replicas: int = 1,
                 agent_config: dict[str, Any] | None = None) -> None:
        self.api = api
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.workdir = workdir
        self.name = name
        self.rack = f"{name}-{uuid.uuid4().hex[:6]}"
        self.count = nodes
        self.replicas = replicas
        self.agent_config = agent_config or {}
        self.gpu_nodes = GpuNodes(api)
        self.agents: dict[str, AgentProcess] = {}
        self.decoy = ""
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def __enter__(self) -> GpuStack:
        try:
            for _ in range(self.count):
                self.add_node()
            self.decoy = self.gpu_nodes.create(region="eu-west-1", labels={RACK_LABEL: self.rack})
            self.core.create_persistent_volume({
                "metadata": {"name": self.rack},
                "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadOnlyMany"],
                         "storageClassName": self.rack, "persistentVolumeReclaimPolicy": "Retain",
                         "hostPath": {"path": f"/var/lib/sovereign-bench/{self.rack}"},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": fleet.REGION_LABEL, "operator": "In", "values": ["me-central-1"]}]}]}}}})
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.document())
        except BaseException:
            self._clean_up()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            delete_stack(self.api, self.namespace, self.name)
        finally:
            self._clean_up()

    def add_node(self) -> str:
        """Another GPU node of the pool in me-central-1, with its agent; its name."""
        node = self.gpu_nodes.create(region="me-central-1", labels={RACK_LABEL: self.rack})
        self.agents[node] = AgentProcess(kubeconfig=self.kubeconfig, node=node, workdir=self.workdir,
                                         config=self.agent_config)
        return node

    def document(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name},
            "spec": {
                "residency": {"jurisdiction": "QA", "regions": ["me-central-1"]},
                "nodePools": [{"name": "gpu", "provisioner": "Existing",
                               "gpu": {"product": fleet.load()["groups"][0]["gpu"]["product"], "perNode": 8},
                               "existing": {"nodeSelector": {RACK_LABEL: self.rack}}}],
                "dataStores": [{"name": "weights", "volume": {"size": "10Gi", "storageClassName": self.rack,
                                                              "accessModes": ["ReadOnlyMany"]}}],
                "models": [{"name": "chat", "model": "Qwen/Qwen2.5-7B-Instruct",
                            "source": {"dataStore": "weights", "path": "qwen2.5-7b-instruct/"},
                            "nodePool": "gpu", "gpusPerReplica": 8, "replicas": self.replicas}],
            },
        }

    def condition(self, kind: str = GPU_HEALTHY_CONDITION) -> dict[str, Any]:
        return stack_conditions(self.api, self.namespace, self.name).get(kind, {})

    def model_pods(self) -> list[client.V1Pod]:
        """The model's pods that are not on their way out."""
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{STACK_LABEL}={self.name},{COMPONENT_LABEL}=inference").items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def serving_nodes(self) -> dict[str, str]:
        """The model's Running pods: pod name -> node name."""
        return {p.metadata.name: p.spec.node_name for p in self.model_pods() if p.status.phase == "Running"}

    def serving_node(self) -> str | None:
        """The node of the model's one Running pod, once there is exactly one."""
        nodes = list(self.serving_nodes().values())
        return nodes[0] if len(nodes) == 1 else None

    def _clean_up(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.gpu_nodes.delete()
        try:
            self.core.delete_persistent_volume(self.rack)
        except client.ApiException as err:
            if err.status != 404:
                raise


def _condition(node: client.V1Node, kind: str) -> str | None:
    return next((c.status for c in node.status.conditions or [] if c.type == kind), None)


# --- the benchmark --------------------------------------------------------------------------------


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
                   and _condition(core.read_node(agent.node), GPU_HEALTHY_CONDITION) == "True",
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
