"""The local sovereign cloud of ``sovereign dev up``: control plane, real node, MinIO, operator, agents.

``DevEnvironment`` starts, in order: the control plane with the simulated GPU fleet and, unless
told not to, a real node in the first (in-country) region with the images imported into its
containerd (``cluster.DevCluster(real_node=...)``; it takes the place of that region's simulated
CPU nodes, so pods without a GPU really run), one MinIO per region bound where the real node's
pods reach it, with a seeded model bucket in the first region (``minio.MinioFleet``; the tiny
GGUF model of the CPU engine too, ``engine.seed_models``), a simulated volume provisioner
(``provisioner``), the operator (``sovereign run``) and one node agent per simulated GPU node on a
fake NVML scenario file (``sovereign agent --fake-nvml``); then it writes the sample stack
(endpoint and credentials filled in; its CPU-engine model and the application calling it only
with a real node) and, unless told not to, applies it. Everything lives under one work directory, whose
``dev.json`` lets ``sovereign dev down`` and ``sovereign dev fault`` find the running environment
from another terminal.

Robust by construction, because people stop it every way there is:
- one run per work directory, held by a lock (``dev.lock``) that dies with the process;
- every process is recorded in ``processes.jsonl`` (``processes.ProcessLedger``) the moment it
  exists, so ``stop()`` (whatever made the run end) and, after a run that was SIGKILLed, the next
  ``start()`` or ``sovereign dev down`` end every process group of it;
- a new run starts from a clean slate: what the previous run left in the work directory (etcd
  data, MinIO data, logs) is removed first, so nothing "already exists" in the new cluster;
- a failure raises ``StartError`` naming the component, its log and the log's tail.

Called by ``cli`` (``sovereign dev``) and the end-to-end tests.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from sovereign.render.names import MODEL_PORT
from sovereign_dev import engine, images
from sovereign_dev import fleet as fleet_mod
from sovereign_dev import nvml_fake as fake_nvml
from sovereign_dev.cluster import ClusterError, Component, DevCluster, stop_components
from sovereign_dev.gpu_scenario import AGENT_PORT_LINE
from sovereign_dev.minio import MinioFleet, MinioStartError
from sovereign_dev.processes import (
    ProcessLedger, free_port, process_alive, reported_port, start_time)
from sovereign_dev.provisioner import SimulatedProvisioner
from sovereign_dev.realnode import RealNodeError

STATE_FILE = "dev.json"
LEDGER_FILE = "processes.jsonl"
LOCK_FILE = "dev.lock"
# What a run creates in its work directory: a new run removes these, and nothing else there,
# because --workdir may name a directory that holds other files too.
RUN_ENTRIES = ("cluster", "minio", "logs", "nvml", "agent.yaml", "sample-stack.yaml", STATE_FILE)
SAMPLE_TEMPLATE = Path(__file__).with_name("dev-stack.yaml")
SAMPLE_NAMESPACE = "sovereign-demo"
SAMPLE_STACK = "citizen-services"
MODEL_BUCKET = "sovereign-models"
MODEL_PATH = "models/qwen2.5-7b-instruct/"
JURISDICTIONS = {"me-central-1": "QA", "eu-west-1": "IE"}
# The sample's model on the real node, the tiny generated model behind it, and what the sample
# keeps only when a real node runs (nothing else could run them).
CPU_MODEL = "chat-cpu"
CPU_MODEL_SOURCE = "tiny-llama-a"
REAL_NODE_ENTRIES = {"nodePools": "cpu", "models": CPU_MODEL, "applications": "chat-client"}
# The loader runs in the operator image, the engine in llama-server's, the sample app in chat-client's.
REAL_NODE_IMAGES = ("operator", "llama-server", "chat-client")


def default_workdir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sovereign" / "dev"


class DevEnvError(RuntimeError):
    """The environment could not start or be found; the message says what to do."""


class StartError(DevEnvError):
    """A component of the environment failed: which one, where its log is, and what it said."""

    def __init__(self, *, component: str, reason: str, log: Path | None,
                 detail: str | None = None) -> None:
        self.component = component
        self.reason = reason
        self.log = log
        self.detail = detail
        where = f" (log: {log})" if log else ""
        super().__init__(f"{component} {reason}{where}" + (f"\n{detail}" if detail else ""))

    @classmethod
    def of(cls, component: Component, reason: str) -> StartError:
        return cls(component=component.name, reason=reason, log=component.log,
                   detail=f"last lines of {component.log}:\n{component.tail()}")


@dataclass
class DevEnvironment:
    """One local cloud in ``workdir``: ``start()``, ``wait_operator_ready()``, optionally
    ``apply_sample()``, ``check()`` while it runs, and ``stop()`` however it ended."""

    workdir: Path
    gpu_nodes_per_region: int | None = None
    regions: list[str] | None = None
    # Run a real node in the first region (needs root); without one every node is simulated.
    real_node: bool = True
    progress: bool = True
    # Where start() says what it does (the CLI prints it); silent by default.
    say: Callable[[str], None] = field(default=lambda message: None)
    cluster: DevCluster | None = None
    minio: MinioFleet | None = None
    provisioner: SimulatedProvisioner | None = None
    processes: dict[str, Component] = field(default_factory=dict)
    # What the run is doing, named in the error of an unexpected failure.
    phase: str = "preparing the work directory"
    _lock: IO[str] | None = None

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def sample_path(self) -> Path:
        return self.workdir / "sample-stack.yaml"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def ledger(self) -> ProcessLedger:
        return ProcessLedger(self.workdir / LEDGER_FILE)

    def start(self) -> None:
        """Claim the work directory, clean up after any earlier run, start everything.

        Raises ``DevEnvError`` when another run holds the directory, ``StartError`` naming the
        component that failed; on any failure (or interrupt) everything started is stopped.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._claim()
        try:
            self._clean_previous_run()
            # From now on `sovereign dev down` finds this process, even while it starts.
            self._update_state(pid=os.getpid(), started=start_time(os.getpid()),
                               logs=str(self.logs), processes=str(self.ledger.path))
            self._start()
        except BaseException:
            self.stop()
            raise

    def _claim(self) -> None:
        lock = open(self.workdir / LOCK_FILE, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            running = read_state(self.workdir) or {}
            pid = f" (pid {running['pid']})" if running.get("pid") else ""
            raise DevEnvError(
                f"a dev environment already runs from {self.workdir}{pid}; stop it with "
                f"`sovereign dev down --workdir {self.workdir}`, or give another --workdir") from None
        self._lock = lock

    def _clean_previous_run(self) -> None:
        # Leftovers of a killed run: their data is about to go, a short grace is enough.
        leftovers = self.ledger.terminate(grace=2)
        if leftovers:
            names = sorted({entry.name for entry in leftovers})
            self.say(f"stopped {len(leftovers)} processes left running by an earlier run "
                     f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        unkillable = self.ledger.alive()
        if unkillable:
            raise DevEnvError(
                "processes of an earlier run survived SIGKILL: " + ", ".join(
                    f"{e.name} (pid {e.pid})" for e in unkillable)
                + f"; they are listed in {self.ledger.path}, end them and start again")
        self.ledger.clear()
        for name in RUN_ENTRIES:
            path = self.workdir / name
            if path.is_dir():
                _release_mounts(path)
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _start(self) -> None:
        fleet = fleet_mod.scaled(fleet_mod.load(), gpu_nodes_per_region=self.gpu_nodes_per_region,
                                 regions=self.regions)
        regions = list(dict.fromkeys(g["region"] for g in fleet["groups"]))
        if self.real_node:
            if os.geteuid() != 0:
                raise DevEnvError("a real node needs root (containers, mounts, iptables, a bridge): "
                                  "run as root, or `sovereign dev up --no-real-node` for simulated "
                                  "nodes only (nothing then answers a chat request)")
        ledger = self.ledger
        self.phase = "starting the control plane" + (f" and the real node ({regions[0]})" if self.real_node else "")
        self.cluster = DevCluster(workdir=self.workdir / "cluster", fleet=fleet,
                                  progress=self.progress, ledger=ledger,
                                  real_node=regions[0] if self.real_node else None,
                                  real_node_images=REAL_NODE_IMAGES if self.real_node else ())
        try:
            # A real node adds containerd, kubelet, kube-proxy and CoreDNS, and its images' import.
            self.cluster.start(timeout=180 + 2 * len(fleet_mod.nodes(fleet))
                               + (180 if self.real_node else 0))
        except ClusterError as err:
            fallback = f"the real node ({regions[0]})" if isinstance(err, RealNodeError) else "the control plane"
            raise StartError(component=err.component or fallback,
                             reason="did not start", log=err.log, detail=str(err)) from None
        self.phase = "starting the volume provisioner"
        node = self.cluster.node
        self.provisioner = SimulatedProvisioner(self.cluster.api_client(), region=regions[0],
                                                real_node=(node.name, node.node_dir) if node is not None else None)
        self.provisioner.start()
        # One object store per region: the first is in-country, the others are what the
        # residency checks must refuse.
        self.phase = "starting MinIO"
        self.minio = MinioFleet(root=self.workdir / "minio", regions=regions, ledger=ledger,
                                host=self.cluster.pod_reachable_host)
        try:
            servers = self.minio.start()
        except MinioStartError as err:
            failed = next((s for s in self.minio.servers.values() if str(s.log_path) in str(err)),
                          None)
            raise StartError(component=f"minio ({failed.region})" if failed else "minio",
                             reason="did not start", log=failed.log_path if failed else None,
                             detail=str(err)) from None
        home = servers[regions[0]]
        self.phase = f"seeding the model bucket in minio ({regions[0]})"
        _seed_model_bucket(home)
        if self.real_node:
            engine.seed_models(client=home.client(), bucket=MODEL_BUCKET, names=[CPU_MODEL_SOURCE])

        env = {"KUBECONFIG": self.cluster.kubeconfig}
        self.phase = "starting the operator"
        # Loopback only. The metrics server binds port 0 itself; the lookup webhook server needs its
        # port up front, so that one is picked, and picked again if it was taken meanwhile.
        self._spawn("operator", lambda: [
            sys.executable, "-m", "sovereign", "run", "--all-namespaces", "--standalone",
            "--resync-seconds", "15", "--audit-seconds", "10",
            "--metrics-address", "127.0.0.1", "--metrics-port", "0",
            "--webhook-address", "127.0.0.1", "--webhook-port", str(free_port()),
            "--webhook-host", "127.0.0.1"], env)
        agent_config = self.workdir / "agent.yaml"
        # A scripted fault should clear within seconds of `dev fault --clear`, not 5 minutes.
        agent_config.write_text(yaml.safe_dump(
            {"health": {"xid_quiet_window_s": 20, "recovery_clean_polls": 2}}))
        gpu_nodes = [n["metadata"]["name"] for n in fleet_mod.nodes(fleet)
                     if fleet["gpu"]["resource"] in n["status"]["capacity"]]
        self.phase = "starting the node agents"
        for node in gpu_nodes:
            scenario = self.nvml_path(node)
            fake_nvml.write_scenario(scenario, fake_nvml.healthy_node(seed=node))
            # Port 0: each agent binds its own metrics port and logs it (AGENT_PORT_LINE).
            self._spawn(f"agent-{node}", [
                sys.executable, "-m", "sovereign", "agent", "--node", node,
                "--kubeconfig", self.cluster.kubeconfig, "--fake-nvml", str(scenario),
                "--config", str(agent_config),
                "--metrics-address", "127.0.0.1", "--metrics-port", "0",
                "--interval", "2"], env)
        self.sample_path.write_text(sample_stack(
            real_node=self.real_node, namespace=SAMPLE_NAMESPACE, region=regions[0],
            jurisdiction=JURISDICTIONS.get(regions[0], "QA"), endpoint=home.endpoint,
            bucket=MODEL_BUCKET, model_path=MODEL_PATH, access_key=home.access_key,
            secret_key=home.secret_key))
        self.phase = "writing dev.json"
        self._update_state(
            kubeconfig=self.cluster.kubeconfig, server=self.cluster.server, regions=regions,
            minio={region: s.endpoint for region, s in servers.items()},
            nvml={node: str(self.nvml_path(node)) for node in gpu_nodes},
            sample=str(self.sample_path), chat=self.chat_commands() if self.real_node else None)

    def chat_commands(self) -> dict[str, str]:
        """How a user asks the sample's CPU model: ``sovereign chat`` and the same with curl (through
        the apiserver's service proxy, with the cluster admin's certificate)."""
        assert self.cluster is not None
        pki = self.workdir / "cluster" / "pki"
        body = json.dumps({"model": CPU_MODEL, "max_tokens": 32,
                           "messages": [{"role": "user", "content": "Say hello"}]})
        return {
            "sovereign": f"sovereign chat {CPU_MODEL} 'Say hello' --kubeconfig {self.cluster.kubeconfig}",
            "curl": (f"curl -s --cacert {pki / 'ca.crt'} --cert {pki / 'admin.crt'} --key {pki / 'admin.key'} "
                     f"{self.cluster.server}/api/v1/namespaces/{SAMPLE_NAMESPACE}/services/{CPU_MODEL}:{MODEL_PORT}"
                     f"/proxy/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"),
        }

    def nvml_path(self, node: str) -> Path:
        return self.workdir / "nvml" / f"{node}.json"

    def apply_sample(self) -> None:
        assert self.cluster is not None
        self.phase = "applying the sample stack"
        result = self.cluster.kubectl("apply", "--server-side", "-f", str(self.sample_path))
        if result.returncode != 0:
            raise DevEnvError(f"applying {self.sample_path} failed: {result.stderr.strip()}")

    def check(self) -> None:
        """Raise ``StartError`` for the first process of the environment that is no longer
        running (one that lost its picked port to another process is started again instead)."""
        components = list(self.processes.values())
        if self.cluster is not None:
            components += self.cluster.all_components
        for component in components:
            if not component.running() and not component.restart_if_port_taken():
                code = component.process.returncode if component.process else None
                raise StartError.of(component, f"exited with code {code}")
        if self.minio is not None:
            for server in self.minio.servers.values():
                if not server.running:
                    raise StartError(component=f"minio ({server.region})", reason="exited",
                                     log=server.log_path, detail=server.log_tail())

    def wait_operator_ready(self, timeout: float | None = None) -> None:
        """Wait until every agent marked its node, while checking every process still runs.

        The default timeout grows with the fleet: on two cores a hundred agents take a while
        to import and make their first poll. On timeout, ``StartError`` names the agents that
        have not reported, with the log of the first.
        """
        assert self.cluster is not None
        import urllib3
        from kubernetes import client

        self.phase = "waiting for the node agents"
        agents = {name.removeprefix("agent-"): c for name, c in self.processes.items()
                  if name.startswith("agent-")}
        deadline = time.monotonic() + (timeout if timeout is not None else 120 + len(agents))
        api = self.cluster.api_client()
        core = client.CoreV1Api(api)
        silent = sorted(agents)
        try:
            while True:
                self.check()
                try:
                    marked = {n.metadata.name for n in core.list_node().items
                              if any(c.type == "GPUHealthy" for c in n.status.conditions or [])}
                    silent = [node for node in sorted(agents) if node not in marked]
                except (client.ApiException, urllib3.exceptions.HTTPError):
                    pass  # the apiserver busy or slow to answer: the next pass asks again
                if not silent:
                    break
                if time.monotonic() > deadline:
                    first = agents[silent[0]]
                    raise StartError(
                        component=first.name,
                        reason=f"did not report GPU health in time ({len(silent)} of "
                               f"{len(agents)} agents silent: {', '.join(silent[:8])}"
                               f"{', ...' if len(silent) > 8 else ''})",
                        log=first.log, detail=f"last lines of {first.log}:\n{first.tail()}")
                time.sleep(1)
        finally:
            api.close()
        ports = {node: reported_port(c.output(), AGENT_PORT_LINE) for node, c in agents.items()}
        self._update_state(agent_metrics={node: f"http://127.0.0.1:{port}/metrics"
                                          for node, port in ports.items() if port})

    def stop(self) -> None:
        """End everything this run started, whatever state the start got to; idempotent.

        Clients of the apiserver first, while it still answers (Kopf stops in half a second
        then, in seconds once it is gone): the provisioner thread, then operator and agents all
        at once. Then MinIO, then the control plane in reverse start order; last, any process
        the ledger recorded that is still running. Every step runs even when an earlier one fails.
        """
        steps: list[Callable[[], object]] = [
            lambda: self.provisioner.stop() if self.provisioner is not None else None,
            lambda: stop_components(list(self.processes.values())),
            lambda: self.minio.stop() if self.minio is not None else None,
            lambda: self.cluster.stop() if self.cluster is not None else None,
        ]
        if self._lock is not None:
            # Only the run that holds the work directory may touch what the ledger names.
            steps.append(lambda: self.ledger.terminate(grace=5))
        for step in steps:
            try:
                step()
            except Exception as err:  # noqa: BLE001 - the remaining steps must still run
                self.say(f"while stopping: {type(err).__name__}: {err}")
        if self._lock is not None:
            # The ledger stays: it says what the run started, and the next run checks it again.
            self.state_path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def _spawn(self, name: str, argv: list[str] | Callable[[], list[str]],
               env: dict[str, str]) -> None:
        repick = argv if callable(argv) else None
        component = Component(name, repick() if repick else argv,
                              self.logs / f"{name}.log", repick=repick, ledger=self.ledger)
        self.processes[name] = component
        component.start(env=env)

    def _update_state(self, **fields: Any) -> None:
        """Merge ``fields`` into ``dev.json``, replaced whole so a reader never sees half of it."""
        state = {**(read_state(self.workdir) or {}), **fields}
        partial = self.state_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(self.state_path)


def read_state(workdir: Path) -> dict[str, Any] | None:
    path = workdir / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # cut short by a crash while it was written: no usable state


def stop_running(workdir: Path, *, timeout: float = 60) -> bool:
    """Ask the ``dev up`` process of ``workdir`` to tear down; end what is left after ``timeout``.

    Also ends what a ``dev up`` that was killed (SIGKILL) left running. Returns False when
    nothing of a dev environment was running there.
    """
    state = read_state(workdir) or {}
    pid = state.get("pid")
    # A dev up killed with SIGKILL leaves its pid behind for another process to reuse.
    asked = bool(pid) and process_alive(pid) and start_time(pid) == state.get("started")
    if asked:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    leftovers = ProcessLedger(workdir / LEDGER_FILE).terminate(grace=5)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    return asked or bool(leftovers)


def _release_mounts(path: Path) -> None:
    """Detach every mount at or below ``path`` (a killed real node's container file systems), so
    deleting ``path`` never reaches into what they mount; deepest first."""
    root = str(path.resolve())
    with open("/proc/self/mountinfo") as info:
        # Field 5 is the mount point, with blanks and backslashes written as octal escapes.
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                  for line in info]
    for point in sorted((p for p in points if p == root or p.startswith(root + "/")),
                        key=len, reverse=True):
        detached = subprocess.run(["umount", "--lazy", point], capture_output=True, text=True)
        if detached.returncode != 0:
            raise DevEnvError(f"{point} is still mounted from an earlier run and could not be "
                              f"unmounted ({detached.stderr.strip()}); unmount it "
                              f"(umount -R {point}) and start again")


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


def sample_stack(*, real_node: bool, **values: str) -> str:
    """The sample stack's YAML from ``dev-stack.yaml`` with ``values`` filled in; without a real
    node, the entries that only it can run (``REAL_NODE_ENTRIES``) are left out."""
    text = SAMPLE_TEMPLATE.read_text().format(
        cpu_model=CPU_MODEL_SOURCE, cpu_model_path=engine.model_key(CPU_MODEL_SOURCE),
        chat_client_image=images.CHAT_CLIENT_IMAGE, **values)
    if real_node:
        return text
    documents = [d for d in yaml.safe_load_all(text) if d]
    for document in documents:
        spec = document.get("spec") if document.get("kind") == "SovereignStack" else None
        for key, name in REAL_NODE_ENTRIES.items():
            if spec is not None:
                spec[key] = [entry for entry in spec.get(key, []) if entry["name"] != name]
    return yaml.safe_dump_all(documents, sort_keys=False)


def sample_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
