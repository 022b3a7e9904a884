"""Start and stop a real local Kubernetes control plane with simulated GPU nodes.

``DevCluster`` runs etcd, kube-apiserver (TLS, RBAC, ServiceAccount token signing),
kube-controller-manager, kube-scheduler, KWOK and Karpenter (its KWOK cloud provider, with the
instance types of ``fleet.yaml`` and the ``KWOKNodeClass`` ``default``) as child processes on
loopback, each on a free port so several clusters can run side by side (a port taken by someone
else before the component bound it is detected from its log, and the component starts again on
a new one); it writes an admin kubeconfig, creates the fleet of ``fleet.yaml`` and installs CRDs
(Karpenter's from its build, the other upstream ones of ``../shared/upstream-crds`` and the
project's own). Each component logs to
``<workdir>/logs/<name>.log``; when startup fails the raised ``ClusterError`` names the component,
its log and the log's tail. ``stop()`` ends every process group it started; given a
``processes.ProcessLedger``, every process is also recorded there the moment it exists, so a
later run can end what a killed one left behind. With ``real_node=<region>`` a
``realnode.RealNode`` (kubelet, containerd, kube-proxy, CoreDNS) joins the fleet in that region,
where containers really run.

Used by the pytest plugin (``pytest_plugin``), the benchmarks and ``sovereign dev up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sovereign_dev import build, fleet as fleet_mod
from sovereign_dev.pki import CertificateAuthority, KeyPair, service_account_keys
from sovereign_dev.processes import (
    ProcessLedger, Recorded, free_port, port_taken, process_alive, recorded, terminate)

if TYPE_CHECKING:  # realnode builds on this module's Component, so it is imported when needed
    from sovereign_dev.realnode import RealNode

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

#: Karpenter's batching of pending pods (its defaults, set explicitly so the benchmark can name
#: them): a launch decision waits until no pod has been added for the idle period, at most the max.
KARPENTER_PERIODS = {"BATCH_IDLE_DURATION": 1, "BATCH_MAX_DURATION": 10}
#: What Karpenter's KWOK provider logs when its instance-types file does not parse.
KARPENTER_NO_INSTANCE_TYPES = "failed constructing instance types"

# How often a component is started again because its picked port was taken before it bound it.
PORT_ATTEMPTS = 5
# free_port and process_alive live in ``processes``; tests and benchmarks import them from here.
__all__ = ["ClusterError", "Component", "DevCluster", "free_port", "process_alive", "wait_until"]


class ClusterError(RuntimeError):
    """The control plane did not come up; the message includes the relevant log tails.

    ``component`` and ``log`` name the part that failed and where its output is, for callers
    that report it in their own words (``sovereign dev up``).
    """

    def __init__(self, message: str, *, component: str | None = None,
                 log: Path | None = None) -> None:
        super().__init__(message)
        self.component = component
        self.log = log


def upstream_crd_dir() -> Path | None:
    """Where the upstream CRDs are: $SOVEREIGN_UPSTREAM_CRDS, else ``shared/`` beside the repo."""
    configured = os.environ.get("SOVEREIGN_UPSTREAM_CRDS")
    candidates = [Path(configured)] if configured else []
    candidates += [REPO_ROOT.parent / "shared" / "upstream-crds", REPO_ROOT / "shared" / "upstream-crds"]
    return next((c for c in candidates if c.is_dir()), None)


def default_crd_paths() -> list[Path]:
    """Upstream CRDs plus the project's generated ones, in a stable order."""
    paths: list[Path] = []
    upstream = upstream_crd_dir()
    if upstream:
        paths += sorted(upstream.glob("*.yaml"))
    paths += sorted((REPO_ROOT / "crds").glob("*.yaml"))
    return paths


def write_kubeconfig(path: Path, *, server: str, user: KeyPair, ca: KeyPair) -> None:
    """A kubeconfig (context ``sovereign-dev``) for ``user``'s client certificate at ``server``."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sovereign-dev",
        "clusters": [{"name": "sovereign-dev", "cluster": {
            "server": server, "certificate-authority": str(ca.cert)}}],
        "users": [{"name": "sovereign-dev", "user": {
            "client-certificate": str(user.cert), "client-key": str(user.key)}}],
        "contexts": [{"name": "sovereign-dev", "context": {
            "cluster": "sovereign-dev", "user": "sovereign-dev"}}],
    }))
    path.chmod(0o600)


@dataclass
class Component:
    """One child process of the cluster and where its output goes.

    ``repick``, for a component that cannot bind port 0 itself, returns a fresh command line on
    newly picked ports; ``restart_if_port_taken()`` uses it when the component died because its
    port was taken before it could bind it. ``ledger`` records the process the moment it exists.
    """

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen | None = None
    repick: Callable[[], list[str]] | None = None
    ledger: ProcessLedger | None = None
    env: dict[str, str] | None = None
    port_attempts: int = 0
    identity: Recorded | None = None
    _log_offset: int = 0

    def start(self, env: dict[str, str] | None = None) -> None:
        if env is not None:
            self.env = env
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # Where this start's output begins: the tail and the port check read only this run.
            self._log_offset = out.tell()
            # A session of its own, so stop() can end the component and anything it spawned.
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(self.env or {})})
        self.identity = recorded(name=self.name, pid=self.process.pid, log=self.log)
        if self.ledger is not None:
            self.ledger.record(self.identity)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart_if_port_taken(self) -> bool:
        """After an exit: start again on new ports if the exit was a port taken before the
        component bound it, at most ``PORT_ATTEMPTS`` times. False for any other exit."""
        if (self.repick is None or self.running() or self.port_attempts >= PORT_ATTEMPTS
                or not port_taken(self.output())):
            return False
        self.port_attempts += 1
        self.stop()
        self.argv = self.repick()
        with open(self.log, "ab") as out:
            out.write(f"--- port taken; starting again: {' '.join(self.argv)}\n".encode())
        self.start()
        return True

    def stop(self, *, grace: float = 10.0) -> None:
        stop_components([self], grace=grace)

    def output(self) -> str:
        """What the latest start of the process has written so far."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 25) -> str:
        text = self.output().splitlines()[-lines:]
        return "\n".join(text) if text else "(nothing logged)"


def stop_components(components: list[Component], *, grace: float = 10.0) -> None:
    """End every component's process group at once (SIGTERM, SIGKILL after ``grace``), reap them.

    Groups are checked against the start time recorded at start, so a component that exited
    long ago never makes this signal a process that reuses its pid.
    """
    terminate([c.identity for c in components if c.identity is not None], grace=grace)
    for component in components:
        if component.process is not None:
            # Already gone (the group is dead): this only collects the exit status.
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=5)


@dataclass
class DevCluster:
    """A local control plane; use as a context manager or call ``start()``/``stop()``."""

    workdir: Path | None = None
    fleet: dict[str, Any] | None = None
    crd_paths: list[Path] | None = None
    progress: bool = True
    ledger: ProcessLedger | None = None
    # A region of the fleet: run a real node (containers really run) there, next to KWOK's.
    real_node: str | None = None
    # Images (``images.py`` names) imported into the real node's containerd besides pause.
    real_node_images: tuple[str, ...] = ()
    components: dict[str, Component] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    node: RealNode | None = None

    def __post_init__(self) -> None:
        self._owns_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="sovereign-devcluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.fleet is None:
            self.fleet = fleet_mod.load()
        if self.real_node:
            self.fleet = fleet_mod.with_real_node(self.fleet, region=self.real_node)
        if self.crd_paths is None:
            self.crd_paths = default_crd_paths()

    # -- public surface -------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> str:
        return str(self.workdir / "kubeconfig")

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['etcd']}"

    @property
    def pod_reachable_host(self) -> str:
        """The host address that both this machine and the real node's pods can reach; servers
        pods must call (MinIO, ...) bind to it. Loopback when there is no real node."""
        from sovereign_dev.realnode import GATEWAY

        return GATEWAY if self.real_node else "127.0.0.1"

    @property
    def bin_dirs(self) -> dict[str, Path]:
        return {name: build.ensure(name, progress=self.progress)
                for name in ("etcd", "kubernetes", "kwok", "karpenter")}

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self.all_components if c.process is not None]

    @property
    def all_components(self) -> list[Component]:
        """Every process of the cluster: the control plane's and, if any, the real node's."""
        node = list(self.node.processes.values()) if self.node is not None else []
        return [*self.components.values(), *node]

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per mutating request (user, userAgent, verb, objectRef, code)."""
        return self.workdir / "logs" / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def metrics(self) -> str:
        """The apiserver's own Prometheus exposition (e.g. ``apiserver_request_total``)."""
        with urllib.request.urlopen(f"{self.server}/metrics", context=self._admin_tls(),
                                    timeout=10) as resp:
            return resp.read().decode()

    def api_client(self):
        """A new kubernetes ApiClient authenticated as cluster admin."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)

    def kubectl(self, *args: str, input: str | None = None, check: bool = False,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the cluster's own kubectl build against this cluster."""
        binary = self.bin_dirs["kubernetes"] / "kubectl"
        return subprocess.run([str(binary), "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, timeout: float = 180) -> None:
        """Start every component, create the fleet and install CRDs; raise ClusterError on failure."""
        try:
            self._start(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # The node first: its kubelet must not outlive the apiserver it reports to.
        if self.node is not None:
            self.node.stop()
        # In reverse start order: an apiserver whose etcd is already gone takes ten times longer.
        for name in reversed(list(self.components)):
            self.components[name].stop()

    def logs(self) -> dict[str, Path]:
        return {name: c.log for name, c in self.components.items()}

    # -- start-up -------------------------------------------------------------------------------

    def _start(self, *, timeout: float) -> None:
        bins = self.bin_dirs
        pki = self._pki()
        deadline = time.monotonic() + timeout

        def etcd() -> list[str]:
            client, peer = (f"http://127.0.0.1:{p}" for p in self._pick("etcd", "etcd-peer"))
            # A start that lost its port may have begun a data directory for the old URLs.
            shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
            return [
                str(bins["etcd"] / "etcd"), "--name=devcluster",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=devcluster={peer}",
                # A throwaway cluster: skipping fsync makes it several times faster on small disks.
                "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
            ]

        self._launch("etcd", etcd)
        self._wait("etcd", lambda: _http_ok(f"{self.etcd_url}/health"), deadline)

        kube = bins["kubernetes"]
        audit_policy = self._audit_policy()

        def apiserver() -> list[str]:
            (port,) = self._pick("apiserver")
            return [
                str(kube / "kube-apiserver"),
                # With a real node, its pods reach the apiserver through the `kubernetes`
                # Service, whose endpoint is the advertised address: the node's gateway.
                f"--bind-address={'0.0.0.0' if self.real_node else '127.0.0.1'}",
                f"--advertise-address={self.pod_reachable_host}",
                f"--secure-port={port}",
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={pki['apiserver'].cert}",
                f"--tls-private-key-file={pki['apiserver'].key}",
                f"--client-ca-file={pki['ca'].cert}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki['sa'].cert}",
                f"--service-account-signing-key-file={pki['sa'].key}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-admission-plugins=NodeRestriction",
                "--profiling=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                # How it authenticates to a real node's kubelet (logs, exec, port-forward), and
                # how it dials it: node names do not resolve here, their InternalIP does.
                f"--kubelet-client-certificate={pki['kubelet-client'].cert}",
                f"--kubelet-client-key={pki['kubelet-client'].key}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
            ]

        self._launch("kube-apiserver", apiserver)
        self._wait("kube-apiserver", self._apiserver_ready, deadline)
        # Written once the apiserver holds its port for good: kubeconfigs name it.
        self._write_kubeconfig(self.workdir / "kubeconfig", pki["admin"], pki["ca"])
        for name in ("controller-manager", "scheduler", "kwok", "karpenter"):
            self._write_kubeconfig(self.workdir / f"{name}.kubeconfig", pki[name], pki["ca"])
        self._launch("kube-controller-manager", lambda: [
            str(kube / "kube-controller-manager"), *self._controller_flags("controller-manager"),
            f"--service-account-private-key-file={pki['sa'].key}",
            f"--root-ca-file={pki['ca'].cert}",
            f"--cluster-signing-cert-file={pki['ca'].cert}",
            f"--cluster-signing-key-file={pki['ca'].key}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
        ])
        self._launch("kube-scheduler", lambda: [
            str(kube / "kube-scheduler"), *self._controller_flags("scheduler")])
        kwok_config = self.workdir / "kwok.yaml"
        kwok_config.write_text(yaml.safe_dump({
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
            # The plain binary defaults these to 0 (kwokctl fills them in); 0 disables the loops.
            "options": {"nodeLeaseParallelism": 4, "nodePlayStageParallelism": 4,
                        "podPlayStageParallelism": 8, "podsOnNodeSyncParallelism": 4}}))
        stages = sorted((bins["kwok"] / "assets").glob("*.yaml"))
        self._launch("kwok", lambda: [
            str(bins["kwok"] / "kwok"), f"--config={kwok_config}",
            *(f"--config={stage}" for stage in stages),
            f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{self._pick('kwok')[0]}",
        ])
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._wait(name, lambda n=name: _http_ok(
                f"https://127.0.0.1:{self.ports[n.removeprefix('kube-')]}/healthz"), deadline)
        self._wait("kwok", lambda: _http_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"),
                   deadline)

        api = self.api_client()
        try:
            self._create_fleet(api)
            self._install_crds(api, deadline)
            self._start_karpenter(api, bins["karpenter"], deadline)
            self._wait("kwok", lambda: self._nodes_ready(api), deadline,
                       what="all simulated nodes Ready")
            # The ServiceAccount controller is the last piece pods need (admission requires `default`).
            self._wait("kube-controller-manager", lambda: self._default_sa(api, "default"),
                       deadline, what="ServiceAccount default/default")
            if self.real_node:
                self._start_real_node(api, deadline)
        finally:
            api.close()

    def _start_real_node(self, api, deadline: float) -> None:
        from sovereign_dev.realnode import RealNode

        labels = fleet_mod.real_node_labels(self.fleet, region=self.real_node)
        self.node = RealNode(
            name=f"real-{self.real_node}", labels=labels, server=self.server, ca=self._ca, logs_dir=self.workdir / "logs",
            images=self.real_node_images, ledger=self.ledger, progress=self.progress)
        self.node.start(api=api, deadline=deadline)

    def _pki(self) -> dict[str, KeyPair]:
        directory = self.workdir / "pki"
        ca = self._ca = CertificateAuthority(directory)
        names = ("127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "10.96.0.1")
        return {
            "ca": ca.pair,
            "apiserver": ca.issue("apiserver", common_name="kube-apiserver", server_names=names,
                                  client=False),
            "admin": ca.issue("admin", common_name="sovereign-admin", organization="system:masters"),
            "controller-manager": ca.issue("controller-manager",
                                           common_name="system:kube-controller-manager"),
            "scheduler": ca.issue("scheduler", common_name="system:kube-scheduler"),
            # KWOK acts as every kubelet at once; there is no narrower bootstrap role for that.
            "kwok": ca.issue("kwok", common_name="kwok-controller", organization="system:masters"),
            # Karpenter's chart binds it a ClusterRole as wide as nodes, pods and its CRDs go.
            "karpenter": ca.issue("karpenter", common_name="karpenter", organization="system:masters"),
            "kubelet-client": ca.issue("kubelet-client", common_name="kube-apiserver-kubelet-client",
                                       organization="system:masters"),
            "sa": service_account_keys(directory),
        }

    def _controller_flags(self, name: str) -> list[str]:
        """Flags the controller-manager and the scheduler share: loopback, their own (newly
        picked) port, kubeconfig (also for delegated authn/authz) and serving-cert directory, no
        election."""
        kubeconfig = self.workdir / f"{name}.kubeconfig"
        (port,) = self._pick(name)
        return [
            "--bind-address=127.0.0.1", "--leader-elect=false", f"--secure-port={port}",
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", f"--cert-dir={self.workdir / name}",
        ]

    def _write_kubeconfig(self, path: Path, user: KeyPair, ca: KeyPair) -> None:
        write_kubeconfig(path, server=self.server, user=user, ca=ca)

    def _pick(self, *names: str) -> list[int]:
        """New ports for ``names`` (kept in ``ports``), in order."""
        for name in names:
            self.ports[name] = free_port()
        return [self.ports[name] for name in names]

    def _launch(self, name: str, argv: list[str] | Callable[[], list[str]], *,
                env: dict[str, str] | None = None) -> None:
        """Start component ``name``. Given a function, the command line is what it builds from
        freshly picked ports, and ``_wait`` calls it again if another process took a port first;
        a fixed list suits components on fixed or self-chosen ports."""
        repick = argv if callable(argv) else None
        component = Component(name, repick() if repick else list(argv),
                              self.workdir / "logs" / f"{name}.log", repick=repick,
                              ledger=self.ledger, env=env)
        self.components[name] = component
        component.start()

    def _wait(self, name: str, ready: Callable[[], bool], deadline: float, *,
              what: str | None = None) -> None:
        while time.monotonic() < deadline:
            dead = [c for c in self.components.values()
                    if not c.running() and not c.restart_if_port_taken()]
            if dead:
                raise ClusterError(self._report(f"{dead[0].name} exited with code "
                                                f"{dead[0].process.returncode}", dead[0].name),
                                   component=dead[0].name, log=dead[0].log)
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - any failure of a probe means "not ready yet"
                pass
            time.sleep(0.25)
        raise ClusterError(self._report(f"timed out waiting for {what or name}", name),
                           component=name, log=self.components[name].log)

    def _report(self, headline: str, focus: str) -> str:
        parts = [f"local control plane failed to start: {headline} (logs in {self.workdir / 'logs'})"]
        for name, component in self.components.items():
            if name == focus or not component.running():
                parts.append(f"--- last lines of {name} ({component.log}) ---\n{component.tail()}")
        return "\n".join(parts)

    def _admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        context.load_cert_chain(self.workdir / "pki" / "admin.crt", self.workdir / "pki" / "admin.key")
        return context

    def _apiserver_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.server}/readyz", context=self._admin_tls(),
                                    timeout=5) as resp:
            return resp.status == 200

    def _audit_policy(self) -> Path:
        # Writes only, at Metadata level: who (user, userAgent) changed what. Reads, node leases
        # and KWOK's pod/node status heartbeats would drown the few writes tests care about.
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "None", "verbs": ["get", "list", "watch"]},
                {"level": "None", "resources": [{"group": "coordination.k8s.io",
                                                 "resources": ["leases"]}]},
                {"level": "None", "users": ["kwok-controller"]},
                {"level": "Metadata"},
            ],
        }))
        return path

    def _create_fleet(self, api) -> None:
        from kubernetes import client

        core = client.CoreV1Api(api)
        for node in fleet_mod.nodes(self.fleet):
            core.create_node(node)

    def _start_karpenter(self, api, binaries: Path, deadline: float) -> None:
        """Karpenter's KWOK provider: the fleet's instance types, its node class, on picked ports.

        The periods it acts on are its defaults (``KARPENTER_PERIODS``): they are what a
        benchmark of "pending pod -> node" measures against.
        """
        from kubernetes import client

        instance_types = self.workdir / "karpenter-instance-types.json"
        instance_types.write_text(json.dumps(fleet_mod.karpenter_instance_types(self.fleet), indent=1))
        node_class = self.fleet["karpenter"]["nodeClass"]
        # The CRD defaults its status to Ready: KWOK's node class needs no cloud to check.
        client.CustomObjectsApi(api).create_cluster_custom_object(
            node_class["group"], "v1alpha1", "kwoknodeclasses",
            {"apiVersion": f"{node_class['group']}/v1alpha1", "kind": node_class["kind"],
             "metadata": {"name": node_class["name"]}})

        def karpenter() -> list[str]:
            metrics, health = self._pick("karpenter-metrics", "karpenter")
            return [str(binaries / "karpenter"), f"--metrics-port={metrics}", f"--health-probe-port={health}",
                    "--disable-leader-election", "--log-level=info"]

        self._launch("karpenter", karpenter, env={
            "KUBECONFIG": str(self.workdir / "karpenter.kubeconfig"),
            "INSTANCE_TYPES_FILE_PATH": str(instance_types),
            **{key: f"{seconds}s" for key, seconds in KARPENTER_PERIODS.items()}})
        self._wait("karpenter", lambda: _http_ok(f"http://127.0.0.1:{self.ports['karpenter']}/readyz"),
                   deadline)
        # Karpenter logs an instance-types file it cannot read and runs on without any instance
        # type: it would launch nothing, silently. Its readiness comes after that line.
        component = self.components["karpenter"]
        said = [line for line in component.output().splitlines() if KARPENTER_NO_INSTANCE_TYPES in line]
        if said:
            raise ClusterError(self._report(f"karpenter could not read its instance types {instance_types}: "
                                            f"{said[0]}", "karpenter"),
                               component="karpenter", log=component.log)

    def _install_crds(self, api, deadline: float) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        ext = client.ApiextensionsV1Api(api)
        names: list[str] = []
        # Karpenter's own CRDs first: a copy of the same name in the shared upstream set is skipped.
        karpenter = sorted((build.ensure("karpenter", progress=self.progress) / "assets").glob("*.yaml"))
        for path in [*karpenter, *self.crd_paths]:
            for doc in _yaml_docs([path]):
                if doc.get("kind") != "CustomResourceDefinition" or doc["metadata"]["name"] in names:
                    continue
                try:
                    ext.create_custom_resource_definition(doc)
                except ApiException as err:
                    message = json.loads(err.body).get("message", err.body) if err.body else err
                    raise ClusterError(f"the apiserver rejected the CRD in {path}: {message}",
                                       component="kube-apiserver",
                                       log=self.components["kube-apiserver"].log) from None
                names.append(doc["metadata"]["name"])

        def established() -> bool:
            for name in names:
                crd = ext.read_custom_resource_definition(name)
                conditions = {c.type: c.status for c in (crd.status.conditions or [])}
                if conditions.get("Established") != "True":
                    return False
            return True

        self._wait("kube-apiserver", established, deadline, what=f"CRDs established: {names}")

    @staticmethod
    def _nodes_ready(api) -> bool:
        from kubernetes import client

        nodes = client.CoreV1Api(api).list_node().items
        return bool(nodes) and all(
            any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
            for n in nodes)

    @staticmethod
    def _default_sa(api, namespace: str) -> bool:
        from kubernetes import client

        client.CoreV1Api(api).read_namespaced_service_account("default", namespace)
        return True


def _http_ok(url: str) -> bool:
    context = ssl._create_unverified_context()  # probes of loopback health endpoints only
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def _yaml_docs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def wait_until(predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.25,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError naming ``message``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - reported if the wait times out
            last_error = err
        time.sleep(interval)
    suffix = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message}{suffix}")

