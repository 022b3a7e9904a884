"""The local sovereign cloud of ``sovereign dev up``: control plane, MinIO, operator and agents.

``DevEnvironment`` starts, in order: the control plane with the simulated GPU fleet
(``cluster.DevCluster``), one MinIO per region with a seeded model bucket in the first
(in-country) region (``minio.MinioFleet``), a simulated volume provisioner (``provisioner``), the operator (``sovereign run``) and one node agent
per simulated GPU node on a fake NVML scenario file (``sovereign agent --fake-nvml``); then it
writes the sample stack (endpoint and credentials filled in) and, unless told not to, applies it.
Everything lives under one work directory, whose ``dev.json`` lets ``sovereign dev down`` and
``sovereign dev fault`` find the running environment from another terminal.

Called by ``cli.dev`` and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sovereign_dev import fleet as fleet_mod
from sovereign_dev.cluster import Component, DevCluster, free_port, process_alive, wait_until
from sovereign_dev.minio import MinioFleet
from sovereign_dev.provisioner import SimulatedProvisioner
from sovereign_dev import nvml_fake as fake_nvml

STATE_FILE = "dev.json"
SAMPLE_TEMPLATE = Path(__file__).with_name("dev-stack.yaml")
SAMPLE_NAMESPACE = "sovereign-demo"
SAMPLE_STACK = "citizen-services"
MODEL_BUCKET = "sovereign-models"
MODEL_PATH = "models/qwen2.5-7b-instruct/"
JURISDICTIONS = {"me-central-1": "QA", "eu-west-1": "IE"}


def default_workdir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sovereign" / "dev"


class DevEnvError(RuntimeError):
    """The environment could not start or be found; the message says what to do."""


@dataclass
class DevEnvironment:
    workdir: Path
    gpu_nodes_per_region: int | None = None
    regions: list[str] | None = None
    progress: bool = True
    cluster: DevCluster | None = None
    minio: MinioFleet | None = None
    provisioner: SimulatedProvisioner | None = None
    processes: dict[str, Component] = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def sample_path(self) -> Path:
        return self.workdir / "sample-stack.yaml"

    def start(self) -> None:
        running = read_state(self.workdir)
        if running and process_alive(running["pid"]):
            raise DevEnvError(f"a dev environment already runs from {self.workdir} (pid "
                              f"{running['pid']}); stop it with `sovereign dev down` first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        fleet = fleet_mod.scaled(fleet_mod.load(), gpu_nodes_per_region=self.gpu_nodes_per_region,
                                 regions=self.regions)
        regions = sorted({g["region"] for g in fleet["groups"]},
                         key=lambda r: [g["region"] for g in fleet["groups"]].index(r))
        self.cluster = DevCluster(workdir=self.workdir / "cluster", fleet=fleet,
                                  progress=self.progress)
        self.cluster.start()
        self.provisioner = SimulatedProvisioner(self.cluster.api_client(), region=regions[0])
        self.provisioner.start()
        # One object store per region: the first is in-country, the others are what the
        # residency checks must refuse.
        self.minio = MinioFleet(root=self.workdir / "minio", regions=regions)
        servers = self.minio.start()
        home = servers[regions[0]]
        _seed_model_bucket(home)

        env = {"KUBECONFIG": self.cluster.kubeconfig}
        # Loopback and free ports, so two environments (or a test run) never collide; short
        # periods, so what a user does shows within seconds.
        self._spawn("operator", [
            sys.executable, "-m", "sovereign", "run", "--all-namespaces", "--standalone",
            "--resync-seconds", "15", "--audit-seconds", "10",
            "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()),
            "--webhook-address", "127.0.0.1", "--webhook-port", str(free_port()),
            "--webhook-host", "127.0.0.1"], env)
        agent_config = self.workdir / "agent.yaml"
        # A scripted fault should clear within seconds of `dev fault --clear`, not 5 minutes.
        agent_config.write_text(yaml.safe_dump(
            {"health": {"xid_quiet_window_s": 20, "recovery_clean_polls": 2}}))
        gpu_nodes = [n["metadata"]["name"] for n in fleet_mod.nodes(fleet)
                     if fleet["gpu"]["resource"] in n["status"]["capacity"]]
        for node in gpu_nodes:
            scenario = self.nvml_path(node)
            fake_nvml.write_scenario(scenario, fake_nvml.healthy_node(seed=node))
            self._spawn(f"agent-{node}", [
                sys.executable, "-m", "sovereign", "agent", "--node", node,
                "--kubeconfig", self.cluster.kubeconfig, "--fake-nvml", str(scenario),
                "--config", str(agent_config),
                "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()),
                "--interval", "2"], env)
        self.sample_path.write_text(SAMPLE_TEMPLATE.read_text().format(
            namespace=SAMPLE_NAMESPACE, region=regions[0],
            jurisdiction=JURISDICTIONS.get(regions[0], "QA"), endpoint=home.endpoint,
            bucket=MODEL_BUCKET, model_path=MODEL_PATH, access_key=home.access_key,
            secret_key=home.secret_key))
        self._write_state(regions=regions, servers=servers, gpu_nodes=gpu_nodes)

    def nvml_path(self, node: str) -> Path:
        return self.workdir / "nvml" / f"{node}.json"

    def apply_sample(self) -> None:
        assert self.cluster is not None
        result = self.cluster.kubectl("apply", "--server-side", "-f", str(self.sample_path))
        if result.returncode != 0:
            raise DevEnvError(f"applying {self.sample_path} failed: {result.stderr.strip()}")

    def wait_operator_ready(self, timeout: float = 120) -> None:
        """Wait until every agent marked its node and the operator process is still alive."""
        assert self.cluster is not None
        api = self.cluster.api_client()
        from kubernetes import client

        core = client.CoreV1Api(api)

        def marked() -> bool:
            for name, proc in self.processes.items():
                if not proc.running():
                    raise DevEnvError(f"{name} exited; its log:\n{proc.tail()}")
            nodes = [n for n in core.list_node().items
                     if "nvidia.com/gpu" in (n.status.capacity or {})]
            return all(any(c.type == "GPUHealthy" for c in n.status.conditions or [])
                       for n in nodes)

        try:
            wait_until(marked, timeout=timeout, message="node agents to report GPU health")
        finally:
            api.close()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        if self.provisioner is not None:
            self.provisioner.stop()
        if self.minio is not None:
            self.minio.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.state_path.exists():
            self.state_path.unlink()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        component = Component(name, argv, self.workdir / "logs" / f"{name}.log")
        self.processes[name] = component
        component.start(env=env)

    def _write_state(self, *, regions: list[str], servers: dict[str, Any],
                     gpu_nodes: list[str]) -> None:
        assert self.cluster is not None
        state = {
            "pid": os.getpid(),
            "kubeconfig": self.cluster.kubeconfig,
            "server": self.cluster.server,
            "regions": regions,
            "minio": {region: s.endpoint for region, s in servers.items()},
            "nvml": {node: str(self.nvml_path(node)) for node in gpu_nodes},
            "sample": str(self.sample_path),
            "logs": str(self.workdir / "logs"),
            "pids": self.cluster.pids + [p.process.pid for p in self.processes.values()
                                         if p.process is not None],
        }
        self.state_path.write_text(json.dumps(state, indent=2))


def read_state(workdir: Path) -> dict[str, Any] | None:
    path = workdir / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def stop_running(workdir: Path, *, timeout: float = 60) -> bool:
    """Ask the ``dev up`` process of ``workdir`` to tear down; kill what is left after ``timeout``.

    Returns False when no environment was running there.
    """
    state = read_state(workdir)
    if not state:
        return False
    if process_alive(state["pid"]):
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process_alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    for pid in state["pids"]:
        if process_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (workdir / STATE_FILE).unlink(missing_ok=True)
    return True


def _seed_model_bucket(server: Any) -> None:
    """A compliant in-country bucket holding a tiny but complete model directory.

    Created through the same store layer the operator uses, with default encryption on (the
    residency checks refuse a bucket without it), so the sample stack can become Ready.
    """
    from sovereign.stores.credentials import Credentials
    from sovereign.stores.s3 import S3Store

    store = S3Store(endpoint=server.endpoint, region=server.region, path_style=True,
                    credentials=Credentials(access_key_id=server.access_key,
                                            secret_access_key=server.secret_key))
    store.create_bucket(bucket=MODEL_BUCKET, region=server.region, encryption=True,
                        versioning=True)
    s3 = server.client()
    files = {
        "config.json": json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                   "hidden_size": 64, "num_hidden_layers": 2}),
        "tokenizer_config.json": json.dumps({"model_max_length": 32768}),
        "generation_config.json": json.dumps({"do_sample": True, "temperature": 0.7}),
        "model.safetensors": os.urandom(512 * 1024),
    }
    for name, body in files.items():
        s3.put_object(Bucket=MODEL_BUCKET, Key=f"{MODEL_PATH}{name}",
                      Body=body.encode() if isinstance(body, str) else body)


def sample_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
