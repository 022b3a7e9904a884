"""Simulated GPU nodes with real node agents, and a stack on them: for GPU-health tests and benchmarks.

``GpuNodes`` prepares simulated GPU nodes, ``AgentProcess`` runs ``sovereign agent`` on a fake
NVML scenario for one of them, ``GpuStack`` puts a one-model stack on those nodes under a real
``sovereign run``; ``tainted`` and ``time_until_node`` read what the agent wrote. Used by
``tests/integration/test_gpu_reaction.py`` and ``bench/gpu_agent.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from sovereign_dev.scenario import RACK_LABEL, delete_stack, stack_conditions
from sovereign.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from sovereign_dev import fleet
from sovereign_dev.cluster import wait_until
from sovereign_dev.processes import reported_port
from sovereign.kube.nodes import GPU_HEALTHY_CONDITION, GPU_UNHEALTHY_TAINT_KEY
from sovereign_dev.nvml_fake import clear_faults, healthy_node, inject_xid, write_scenario
from sovereign.render.names import COMPONENT_LABEL, STACK_LABEL

#: Agent settings of the fault runs: the shipped ones, except that an unclassified XID stops
#: counting after a few seconds instead of five minutes and one clean poll publishes a recovery,
#: so one run can script several faults (a fatal XID is held until ``clear_faults``, the reset).
FAULT_CONFIG = {"health": {"xid_quiet_window_s": 3, "recovery_clean_polls": 1}}
WAIT = 120
#: The line ``sovereign agent`` logs once its metrics server listens: with ``--metrics-port 0``
#: the agent binds a free port itself, and this is where it says which.
AGENT_PORT_LINE = r"metrics on [\d.]+:(\d+)/metrics"


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
        wait_until(lambda: node_condition(self.core.read_node(name), "Ready") == "True", timeout=WAIT,
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
    """``sovereign agent`` for one node on a fake NVML scenario file, as a subprocess; its
    metrics server binds a port of its own choosing (``port`` reads it from the log)."""

    def __init__(self, *, kubeconfig: str, node: str, workdir: Path, interval: float = 1.0,
                 config: dict[str, Any] | None = None) -> None:
        self.node = node
        self.scenario = workdir / f"{node}.nvml.json"
        self.log = workdir / f"{node}.agent.log"
        write_scenario(self.scenario, healthy_node(seed=node))
        config_path = workdir / f"{node}.agent.yaml"
        config_path.write_text(yaml.safe_dump(config or {}))
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sovereign", "agent", "--node", node, "--kubeconfig", kubeconfig,
                 "--config", str(config_path), "--interval", str(interval), "--fake-nvml", str(self.scenario),
                 "--metrics-address", "127.0.0.1", "--metrics-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self._alive() and self.polls() >= 1, timeout=WAIT,
                   message=f"the agent of {node} to finish its first poll (log: {self.log})")

    @property
    def port(self) -> int:
        port = reported_port(self.log.read_text(errors="replace"), AGENT_PORT_LINE)
        if port is None:
            raise RuntimeError(f"the agent of {self.node} serves no metrics yet (log: {self.log})")
        return port

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


def node_condition(node: client.V1Node, kind: str) -> str | None:
    return next((c.status for c in node.status.conditions or [] if c.type == kind), None)


# --- the benchmark --------------------------------------------------------------------------------
