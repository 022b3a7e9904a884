"""A real Kubernetes node next to the KWOK fleet, where containers really run.

``RealNode`` runs, as child processes of the harness, containerd (Debian's, with its own root,
state and socket under the node's directory and our pinned runc as its runtime), a kubelet and
kube-proxy from the pinned Kubernetes release, and CoreDNS as a host process serving
``cluster.local``. Pods join a CNI bridge of ours (``sovereign0``, ``POD_CIDR``) whose gateway
address (``GATEWAY``) is also the node's InternalIP (so the apiserver reaches the kubelet for logs
and exec), the cluster DNS server and the address host services such as MinIO bind to when pods
must reach them. The node registers itself with the region and zone labels of the fleet's KWOK
nodes, and is not managed by KWOK.

One real node per machine: kube-proxy and the bridge own host-wide state (iptables chains, a
link), so a host lock (``/run/sovereign-stack/realnode.lock``) refuses a second one, naming the
owner's logs. The node's own files (containerd's root, state and sockets, the kubelet's root
directory, CNI and pod logs) live in ``NODE_DIR``, a short fixed path because unix socket paths
are limited to about 100 bytes and a test's workdir can be longer; its processes log to the
cluster's ``logs/``. What the node adds to the host (that directory and its mounts, iptables
chains, cgroups, shim sockets, CNI result files, container log links, sysctls) is recorded before
start in ``/run/sovereign-stack/realnode.json`` and removed by ``stop()``, whatever went wrong; a
start after a killed harness sweeps the previous run's leftovers first.

Used by ``cluster.DevCluster`` (``real_node=<region>``) and, through it, the pytest plugin's
``real_cluster`` fixture.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sovereign_dev import build
from sovereign_dev.cluster import ClusterError, Component, write_kubeconfig
from sovereign_dev.pki import CertificateAuthority, KeyPair
from sovereign_dev.processes import ProcessLedger, free_port

POD_CIDR = "10.85.0.0/24"
GATEWAY = "10.85.0.1"
BRIDGE = "sovereign0"
CNI_NETWORK = "sovereign-realnode"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIR = Path("/usr/lib/cni")
HOST_DIR = Path("/run/sovereign-stack")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NODE_DIR = Path("/var/lib/sovereign-stack/realnode")
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CNI_CACHE_DIR = Path("/var/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# kube-proxy and the CNI plugins name their chains with these prefixes.
_CHAIN_PREFIXES = ("KUBE-", "CNI-")
# Result files libcni caches per attachment: our bridge network, and containerd's own loopback.
_CNI_RESULT_PREFIXES = (f"{CNI_NETWORK}-", "cni-loopback-")
_SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")
_MNT_DETACH = 2
# Debian package that provides each host binary the node needs (named in the error if missing).
_HOST_TOOLS = {
    "containerd": "containerd", "ctr": "containerd", "containerd-shim-runc-v2": "containerd",
    "iptables": "iptables", "iptables-save": "iptables", "conntrack": "conntrack", "ip": "iproute2",
}


class RealNodeError(ClusterError):
    """The real node could not start; the message names the component and its log's tail
    (``component`` and ``log`` too, as for the control plane's components)."""


@dataclass
class RealNode:
    """One real node registered with the cluster at ``server``; ``start()`` then ``stop()``."""

    name: str
    labels: dict[str, str]
    server: str
    ca: CertificateAuthority
    logs_dir: Path
    images: tuple[str, ...] = ()
    ledger: ProcessLedger | None = None
    progress: bool = True
    node_dir: Path = NODE_DIR
    processes: dict[str, Component] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node_dir = Path(self.node_dir)
        self._lock: int | None = None
        self._state: dict[str, Any] | None = None

    # -- public surface -------------------------------------------------------------------------

    @property
    def containerd_address(self) -> str:
        return str(self.node_dir / "containerd" / "containerd.sock")

    @property
    def cgroup_parent(self) -> str:
        """The cgroup (in every hierarchy) under which the kubelet puts all pods of this node."""
        return f"/sovereign-{self.name}"

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """containerd's own client against this node's containerd, in the CRI namespace."""
        return subprocess.run(["ctr", "--address", self.containerd_address, "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *, api: Any, deadline: float) -> None:
        """Start containerd, CoreDNS, kubelet and kube-proxy; return when the node is Ready.

        ``api`` is an admin ApiClient of the cluster. On failure everything started is removed
        again and ``RealNodeError`` names the component and the tail of its log.
        """
        try:
            self._start(api=api, deadline=deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process and remove what the node added to the host; safe to call twice."""
        for name in ("kube-proxy", "kubelet", "coredns"):
            if name in self.processes:
                self.processes[name].stop()
        state = _read_state()
        if state is not None and state.get("owner") == str(self.logs_dir):
            state = self._state = {**(self._state or {}), **state}
            errors = _sweep(state, containerd=self.processes.get("containerd"))
            if errors:
                # The record stays, so the next start sweeps again before it adds anything.
                self._say(f"real node {self.name} clean-up left problems: " + "; ".join(errors))
            else:
                _remove_state()
        elif "containerd" in self.processes:
            self.processes["containerd"].stop()
        self._release_lock()

    def leftovers(self) -> list[str]:
        """What this node's last run still has on the host (empty after a clean ``stop()``)."""
        state = self._state
        if state is None:
            return []
        found = [f"process {p.name} (pid {p.process.pid})" for p in self.processes.values()
                 if p.running()]
        found += [f"process {pid} ({arg})" for arg in _process_marks(state)
                  for pid in _pids_with_arg(arg)]
        found += [f"mount {m}" for m in _mount_points() if m.startswith(str(self.node_dir) + "/")]
        if self.node_dir.exists():
            found.append(f"directory {self.node_dir}")
        found += [f"cgroup {h / state['cgroup'].lstrip('/')}" for h in _cgroup_hierarchies()
                  if (h / state["cgroup"].lstrip("/")).exists()]
        if Path(f"/sys/class/net/{state['bridge']}").exists():
            found.append(f"bridge {state['bridge']}")
        for tool, tables in state["chains"].items():
            for table, chains in _chains(tool).items():
                found += [f"{tool} chain {table}/{c}" for c in chains
                          if c not in set(tables.get(table, [])) and c.startswith(_CHAIN_PREFIXES)]
        found += [f"shim socket {s}" for s in _shim_sockets(state) if s.exists()]
        found += [f"CNI result {n}" for n in _new(CNI_CACHE_DIR / "results", state["cni_results"])
                  if n.startswith(_CNI_RESULT_PREFIXES)]
        found += [f"sysctl {k}={_read_sysctl(k)} (was {v})" for k, v in state["sysctls"].items()
                  if _read_sysctl(k) != v]
        return found

    # -- start-up -------------------------------------------------------------------------------

    def _start(self, *, api: Any, deadline: float) -> None:
        started = time.monotonic()
        self.processes.clear()  # a restarted node must not be judged by its last run's exits
        _preflight()
        bins = {name: build.ensure(name, progress=self.progress)
                for name in ("kubenode", "runc", "coredns")}
        self._acquire_lock()
        previous = _read_state()
        if previous is not None:
            # The owner of that record is gone (we hold the lock): its leftovers go first.
            self._say(f"sweeping what a previous real node (logs in {previous.get('owner')}) left behind")
            _sweep(previous, containerd=None)
            _remove_state()
        shutil.rmtree(self.node_dir, ignore_errors=True)
        # Recorded before the node creates anything, so the sweep knows which directories were ours.
        self._state = self._snapshot()
        _write_state(self._state)
        self.node_dir.mkdir(parents=True)
        self.ports = {name: free_port() for name in (
            "kubelet", "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics",
            "coredns-health", "coredns-ready")}
        self._network()
        self._cgroups()
        pki = self._pki()
        self._coredns_rbac(api)

        self._launch("containerd", ["containerd", "--config", str(self._containerd_config(bins))])
        self._wait("containerd", lambda: self.ctr("version", timeout=5).returncode == 0, deadline)
        self._import_images()
        self.timings["containerd"] = time.monotonic() - started

        self._launch("coredns", [str(bins["coredns"] / "coredns"), "-conf",
                                 str(self._corefile(pki["coredns"]))])
        self._launch("kubelet", [
            str(bins["kubenode"] / "kubelet"), f"--config={self._kubelet_config(pki)}",
            f"--kubeconfig={self._kubeconfig('kubelet', pki['kubelet'])}",
            f"--root-dir={self.node_dir / 'kubelet'}", f"--cert-dir={self.node_dir / 'kubelet' / 'pki'}",
            f"--hostname-override={self.name}", f"--node-ip={GATEWAY}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())),
        ])
        self._launch("kube-proxy", [str(bins["kubenode"] / "kube-proxy"),
                                    f"--config={self._kube_proxy_config(pki['kube-proxy'])}"])
        self._wait("coredns", lambda: _http_ok(
            f"http://127.0.0.1:{self.ports['coredns-ready']}/ready"), deadline)
        self._wait("kubelet", lambda: _node_ready(api, self.name), deadline,
                   what=f"node {self.name} Ready")
        self._wait("kube-proxy", lambda: _http_ok(
            f"http://127.0.0.1:{self.ports['kube-proxy-healthz']}/healthz"), deadline)
        self.timings["ready"] = time.monotonic() - started
        self._say(f"real node {self.name} Ready in {self.timings['ready']:.0f}s (containerd up "
                  f"with images after {self.timings['containerd']:.0f}s, of which image import "
                  f"{self.timings['images']:.0f}s)")

    def _snapshot(self) -> dict[str, Any]:
        """What the host looks like before the node touches it; the sweep removes the rest."""
        return {
            "owner": str(self.logs_dir), "node_dir": str(self.node_dir), "pid": os.getpid(),
            "cgroup": self.cgroup_parent,
            "containerd_address": self.containerd_address, "bridge": BRIDGE,
            "sysctls": {name: _read_sysctl(name) for name in _SYSCTLS},
            "chains": {tool: _chains(tool) for tool in ("iptables", "ip6tables")},
            "cni_results": _listing(CNI_CACHE_DIR / "results"),
            "created_dirs": [str(p) for p in (SHIM_SOCKET_DIR.parent, SHIM_SOCKET_DIR,
                                             CNI_CACHE_DIR, CNI_CACHE_DIR / "results",
                                             CONTAINER_LOG_LINKS, self.node_dir.parent)
                             if not p.exists()],
            "pod_logs": str(self.node_dir / "pods"),
        }

    def _network(self) -> None:
        # The bridge exists before the kubelet starts, so its gateway can be the node's address
        # and CoreDNS's; the CNI bridge plugin adopts an existing bridge of that name.
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"], component="network")
        _run(["ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE],
             component="network")
        _run(["ip", "link", "set", BRIDGE, "up"], component="network")
        # Forwarding for pod traffic leaving the bridge; bridged traffic through iptables so a
        # ClusterIP answered by a pod on the same bridge is un-NATed on its way back.
        for name in _SYSCTLS:
            _write_sysctl(name, "1")
        conf_dir = self.node_dir / "cni"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "10-sovereign.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": CNI_NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": str(self.node_dir / "cni" / "ipam")}},
                {"type": "loopback"},
            ],
        }, indent=2))

    def _cgroups(self) -> None:
        # cgroupfs driver: the kubelet insists that its cgroup root exists in every hierarchy.
        for hierarchy in _cgroup_hierarchies():
            (hierarchy / self.cgroup_parent.lstrip("/")).mkdir(exist_ok=True)

    def _pki(self) -> dict[str, KeyPair]:
        ca = self.ca
        return {
            "ca": ca.pair,
            # The Node authorizer and NodeRestriction know a kubelet by this name and group.
            "kubelet": ca.issue(f"node-{self.name}", common_name=f"system:node:{self.name}",
                                organization="system:nodes"),
            "kubelet-serving": ca.issue(f"node-{self.name}-serving", common_name=self.name,
                                        server_names=(GATEWAY, self.name), client=False),
            # RBAC's bootstrap policy binds system:node-proxier to this user.
            "kube-proxy": ca.issue("kube-proxy", common_name="system:kube-proxy"),
            "coredns": ca.issue("coredns", common_name=_COREDNS_USER),
        }

    def _kubeconfig(self, name: str, user: KeyPair) -> Path:
        path = self.node_dir / f"{name}.kubeconfig"
        write_kubeconfig(path, server=self.server, user=user, ca=self.ca.pair)
        return path

    def _containerd_config(self, bins: dict[str, Path]) -> Path:
        from sovereign_dev import images

        root = self.node_dir / "containerd"
        cri = {
            "sandbox_image": images.PAUSE_IMAGE,
            # Without it every sandbox fails: `write to /proc/self/oom_score_adj: Permission denied`.
            "restrict_oom_score_adj": True,
            "stream_server_address": "127.0.0.1", "stream_server_port": "0",
            "enable_selinux": False,
            # Pods' network namespaces in our state directory, not the host-wide /run/netns.
            "netns_mounts_under_state_dir": True,
            "containerd": {
                "snapshotter": "overlayfs", "default_runtime_name": "runc",
                "runtimes": {"runc": {
                    "runtime_type": "io.containerd.runc.v2",
                    # Debian's runc 1.1.5 cannot start a sandbox here; the pinned v1.2.6 can.
                    # Root: runc's state, else under the host-wide /run/containerd/runc.
                    "options": {"BinaryName": str(bins["runc"] / "runc"), "SystemdCgroup": False,
                                "Root": str(root / "runc")},
                }},
            },
            "cni": {"bin_dir": str(CNI_BIN_DIR), "conf_dir": str(self.node_dir / "cni"),
                    "max_conf_num": 1},
        }
        config = {
            "version": 2, "root": str(root / "root"), "state": str(root / "state"),
            "grpc": {"address": self.containerd_address},
            "ttrpc": {"address": self.containerd_address + ".ttrpc"},
            "metrics": {"address": ""},
            "disabled_plugins": [
                "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
            ],
            "plugins": {"io.containerd.grpc.v1.cri": cri,
                        "io.containerd.internal.v1.opt": {"path": str(root / "opt")}},
        }
        path = self.node_dir / "containerd.toml"
        path.write_text(_toml(config))
        return path

    def _import_images(self) -> None:
        from sovereign_dev import images

        started = time.monotonic()
        try:
            images.import_images(address=self.containerd_address,
                                 names=["pause", *[i for i in self.images if i != "pause"]])
        except Exception as err:  # noqa: BLE001 - reported with the component's log
            raise RealNodeError(self._report(f"importing images failed: {err}", "containerd"),
                                component="containerd",
                                log=self.processes["containerd"].log) from None
        self.timings["images"] = time.monotonic() - started

    def _corefile(self, user: KeyPair) -> Path:
        kubeconfig = self._kubeconfig("coredns", user)
        path = self.node_dir / "Corefile"
        path.write_text(
            ".:53 {\n"
            f"    bind {GATEWAY}\n"
            "    errors\n"
            "    log\n"
            f"    health 127.0.0.1:{self.ports['coredns-health']}\n"
            f"    ready 127.0.0.1:{self.ports['coredns-ready']}\n"
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
            f"        kubeconfig {kubeconfig} sovereign-dev\n"
            "        fallthrough in-addr.arpa ip6.arpa\n"
            "    }\n"
            "    forward . /etc/resolv.conf\n"
            "    cache 30\n"
            "}\n")
        return path

    def _coredns_rbac(self, api: Any) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        rbac = client.RbacAuthorizationV1Api(api)
        role = {"metadata": {"name": _COREDNS_USER}, "rules": [
            {"apiGroups": [""], "resources": ["services", "namespaces", "endpoints", "pods"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
             "verbs": ["list", "watch"]},
        ]}
        binding = {"metadata": {"name": _COREDNS_USER},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": _COREDNS_USER},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                 "name": _COREDNS_USER}]}
        for create, body in ((rbac.create_cluster_role, role),
                             (rbac.create_cluster_role_binding, binding)):
            try:
                create(body)
            except ApiException as err:
                if err.status != 409:
                    raise

    def _kubelet_config(self, pki: dict[str, KeyPair]) -> Path:
        path = self.node_dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # This machine kind has cgroup v1 (hybrid); kubelet 1.35+ refuses it unless told.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_parent,
            "containerRuntimeEndpoint": f"unix://{self.containerd_address}",
            "address": GATEWAY, "port": self.ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.ports["kubelet-healthz"],
            "tlsCertFile": str(pki["kubelet-serving"].cert),
            "tlsPrivateKeyFile": str(pki["kubelet-serving"].key),
            # The apiserver authenticates with a client certificate of the cluster's CA.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki["ca"].cert)}},
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [GATEWAY], "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.node_dir / "pods"),
            "failSwapOn": False,
            # Images are imported, not pulled: garbage-collecting one would lose it for good.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            # A shared developer disk is often fuller than the defaults allow before evicting.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
        }))
        return path

    def _kube_proxy_config(self, user: KeyPair) -> Path:
        path = self.node_dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "hostnameOverride": self.name, "clusterCIDR": POD_CIDR,
            "clientConnection": {"kubeconfig": str(self._kubeconfig("kube-proxy", user))},
            "healthzBindAddress": f"127.0.0.1:{self.ports['kube-proxy-healthz']}",
            "metricsBindAddress": f"127.0.0.1:{self.ports['kube-proxy-metrics']}",
            # Leave the host's conntrack table sizes and timeouts alone (0 = do not set).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            # NodePorts on 127.0.0.1 would need route_localnet, another host-wide sysctl.
            "iptables": {"localhostNodePorts": False},
            "nodePortAddresses": [f"{GATEWAY}/32"],
        }))
        return path

    # -- processes and errors ---------------------------------------------------------------------

    def _launch(self, name: str, argv: list[str]) -> None:
        process = Component(name, argv, self.logs_dir / f"{name}.log", ledger=self.ledger)
        self.processes[name] = process
        process.start()

    def _wait(self, name: str, ready: Callable[[], bool], deadline: float, *,
              what: str | None = None) -> None:
        while time.monotonic() < deadline:
            dead = [p for p in self.processes.values() if not p.running()]
            if dead:
                raise RealNodeError(self._report(
                    f"{dead[0].name} exited with code {dead[0].process.returncode}", dead[0].name),
                    component=dead[0].name, log=dead[0].log)
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - any failure of a probe means "not ready yet"
                pass
            time.sleep(0.25)
        raise RealNodeError(self._report(f"timed out waiting for {what or name}", name),
                            component=name, log=self.processes[name].log)

    def _report(self, headline: str, focus: str) -> str:
        parts = [f"real node {self.name} failed to start: {headline} (logs in {self.logs_dir})"]
        for name, process in self.processes.items():
            if name == focus or not process.running():
                parts.append(f"--- last lines of {name} ({process.log}) ---\n{process.tail()}")
        return "\n".join(parts)

    def _acquire_lock(self) -> None:
        HOST_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(HOST_DIR / "realnode.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RealNodeError(
                f"another real node runs on this machine ({owner}); one real node per machine: "
                "stop that cluster (`sovereign dev down`, or end its test session) first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, logs in {self.logs_dir}".encode())
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            if _read_state() is None:  # nothing left to sweep: the host keeps no trace of us
                (HOST_DIR / "realnode.lock").unlink(missing_ok=True)
                _rmdir_if_empty(HOST_DIR)
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    def _say(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)


_COREDNS_USER = "sovereign-dev:coredns"


# -- host clean-up --------------------------------------------------------------------------------

def _sweep(state: dict[str, Any], *, containerd: Component | None) -> list[str]:
    """Remove what the node described by ``state`` added to the host; return what failed."""
    errors: list[str] = []

    def step(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - every step runs, failures are reported together
            errors.append(f"{what}: {err}")

    node_dir = Path(state["node_dir"])
    # Read before the node's directories go: the shims' socket names derive from task ids.
    state["shim_socket_paths"] = [str(s) for s in _shim_sockets(state)]
    # A harness killed outright leaves its children running: the kubelet first, so nothing
    # restarts containers; then the containers (every process in the node's cgroups, exec
    # sessions included), the shims that watched them, and containerd.
    kubelet, kube_proxy, coredns, shims, containerd_mark = _process_marks(state)
    step("kubelet, kube-proxy, CoreDNS", lambda: [_kill_processes_with_arg(mark) for mark in
                                                  (kubelet, kube_proxy, coredns)])
    step("container processes", lambda: _kill_cgroup_tree(state["cgroup"]))
    step("containerd shims", lambda: _kill_processes_with_arg(shims))
    if containerd is not None:
        step("containerd", containerd.stop)
    step("containerd", lambda: _kill_processes_with_arg(containerd_mark))
    # Container file systems, /dev/shm of sandboxes, volumes and network namespaces all mount in
    # the node's directory; the veth pairs go with the namespaces.
    step("mounts", lambda: _unmount_under([node_dir]))
    step("cgroups", lambda: _remove_cgroup_tree(state["cgroup"]))
    step("iptables", lambda: _remove_new_chains(state["chains"]))
    step("bridge", lambda: _delete_link(state["bridge"]))
    step("sysctls", lambda: [_write_sysctl(k, v) for k, v in state["sysctls"].items() if v is not None])
    step("shim sockets", lambda: [Path(s).unlink(missing_ok=True) for s in state["shim_socket_paths"]])
    step("CNI results", lambda: [(CNI_CACHE_DIR / "results" / name).unlink()
                                 for name in _new(CNI_CACHE_DIR / "results", state["cni_results"])
                                 if name.startswith(_CNI_RESULT_PREFIXES)])
    step("container log links", lambda: _remove_links_into(CONTAINER_LOG_LINKS, Path(state["pod_logs"])))
    step("node directory", lambda: shutil.rmtree(node_dir) if node_dir.exists() else None)
    step("host directories", lambda: [_rmdir_if_empty(Path(p)) for p in reversed(state["created_dirs"])])
    return errors


def _process_marks(state: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """An argument only this node's kubelet, kube-proxy, CoreDNS, shims and containerd carry."""
    node_dir = Path(state["node_dir"])
    return (f"--config={node_dir / 'kubelet.yaml'}", f"--config={node_dir / 'kube-proxy.yaml'}",
            str(node_dir / "Corefile"), state["containerd_address"], str(node_dir / "containerd.toml"))


def _shim_sockets(state: dict[str, Any]) -> list[Path]:
    """The sockets containerd's runc shims of this node use (or used).

    containerd 1.6 puts them in the host-wide ``/run/containerd/s`` whatever its own state
    directory, named by the sha256 of ``<containerd address>/<namespace>/<task id>``; computing
    the names keeps another containerd's sockets there untouched.
    """
    tasks = Path(state["node_dir"]) / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    known = [Path(s) for s in state.get("shim_socket_paths", [])]
    if not tasks.is_dir():
        return known
    names = {hashlib.sha256(os.path.join(state["containerd_address"], "k8s.io", task).encode()).hexdigest()
             for task in _listing(tasks)}
    return sorted(set(known) | {SHIM_SOCKET_DIR / name for name in names})


def _kill_cgroup_tree(cgroup: str) -> None:
    for _ in range(50):
        pids = set()
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / cgroup.lstrip("/")
            if root.is_dir():
                for procs in root.rglob("cgroup.procs"):
                    pids |= {int(p) for p in procs.read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RealNodeError(f"processes in cgroup {cgroup} survived SIGKILL: {sorted(pids)}")


def _kill_processes_with_arg(argument: str) -> None:
    """SIGKILL every process whose command line has ``argument`` (our socket or config path)."""
    for pid in _pids_with_arg(argument):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids_with_arg(argument: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in args:
            pids.append(int(entry.name))
    return pids


def _unmount_under(roots: list[Path]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    prefixes = [str(r) for r in roots]
    for _ in range(5):
        targets = [m for m in _mount_points()
                   if any(m == p or m.startswith(p.rstrip("/") + "/") for p in prefixes)]
        if not targets:
            return
        for target in sorted(targets, key=len, reverse=True):
            libc.umount2(target.encode(), _MNT_DETACH)
    remaining = [m for m in _mount_points() if any(m.startswith(p) for p in prefixes)]
    if remaining:
        raise RealNodeError(f"mounts left: {remaining}")


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def _remove_cgroup_tree(cgroup: str) -> None:
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / cgroup.lstrip("/")
        if not root.is_dir():
            continue
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            _rmdir_retrying(directory)
        _rmdir_retrying(root)


def _rmdir_retrying(directory: Path) -> None:
    # A cgroup whose last process just died can stay busy for a moment.
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    directory.rmdir()


def _cgroup_hierarchies() -> list[Path]:
    return sorted(p for p in CGROUP_ROOT.iterdir() if (p / "cgroup.procs").exists())


def _chains(tool: str) -> dict[str, list[str]]:
    """table -> chain names, from ``<tool>-save`` (empty when the tool is missing)."""
    try:
        dump = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=60).stdout
    except FileNotFoundError:
        return {}
    tables: dict[str, list[str]] = {}
    table = ""
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables.setdefault(table, [])
        elif line.startswith(":"):
            tables[table].append(line[1:].split()[0])
    return tables


def _remove_new_chains(before: dict[str, dict[str, list[str]]]) -> None:
    """Delete chains kube-proxy or CNI added since ``before``, and the jumps into them."""
    for tool, tables in before.items():
        for table, chains in _chains(tool).items():
            old = set(tables.get(table, []))
            new = [c for c in chains if c not in old and c.startswith(_CHAIN_PREFIXES)]
            if not new:
                continue
            dump = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True,
                                  check=True).stdout
            for line in dump.splitlines():
                if not line.startswith("-A "):
                    continue
                # The dump quotes comments the way a shell would; shlex gives iptables its argv.
                parts = shlex.split(line)
                if parts[1] not in new and any(target in new for target in _jump_targets(parts)):
                    subprocess.run([tool, "-t", table, "-D", *parts[1:]], check=True,
                                   capture_output=True)
            for chain in new:
                subprocess.run([tool, "-t", table, "-F", chain], check=True, capture_output=True)
            for chain in new:
                subprocess.run([tool, "-t", table, "-X", chain], check=True, capture_output=True)


def _jump_targets(rule: list[str]) -> list[str]:
    return [rule[i + 1] for i, arg in enumerate(rule[:-1]) if arg in ("-j", "-g")]


def _delete_link(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        _run(["ip", "link", "del", name], component="network")


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _new(directory: Path, before: list[str]) -> list[str]:
    return [name for name in _listing(directory) if name not in set(before)]


def _remove_links_into(directory: Path, target: Path) -> None:
    if not directory.is_dir():
        return
    for link in directory.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(target)):
            link.unlink()


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        path.rmdir()


def _read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name
    return path.read_text().strip() if path.exists() else None


def _write_sysctl(name: str, value: str) -> None:
    (Path("/proc/sys") / name).write_text(value)


def _read_state() -> dict[str, Any] | None:
    path = HOST_DIR / "realnode.json"
    return json.loads(path.read_text()) if path.exists() else None


def _write_state(state: dict[str, Any]) -> None:
    HOST_DIR.mkdir(parents=True, exist_ok=True)
    (HOST_DIR / "realnode.json").write_text(json.dumps(state, indent=1))


def _remove_state() -> None:
    (HOST_DIR / "realnode.json").unlink(missing_ok=True)


# -- small helpers --------------------------------------------------------------------------------

def _preflight() -> None:
    if os.geteuid() != 0:
        raise RealNodeError("a real node needs root (containers, mounts, iptables, a bridge); "
                            "run as root or leave real_node unset for KWOK nodes only")
    missing = sorted({pkg for tool, pkg in _HOST_TOOLS.items() if shutil.which(tool) is None}
                     | ({"containernetworking-plugins"} if not (CNI_BIN_DIR / "bridge").exists()
                        else set()))
    if missing:
        raise RealNodeError(f"the real node needs the Debian package(s) {', '.join(missing)}: "
                            "run `make setup` (or apt-get install them)")


def _run(argv: list[str], *, component: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RealNodeError(f"real node {component}: `{' '.join(argv)}` failed: "
                            f"{result.stderr.strip() or result.stdout.strip()}")


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return resp.status == 200


def _node_ready(api: Any, name: str) -> bool:
    from kubernetes import client

    node = client.CoreV1Api(api).read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def _toml(config: dict[str, Any]) -> str:
    """The small TOML subset containerd's config needs: nested tables of scalars and lists."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for key, sub in body.items():
            if isinstance(sub, dict):
                name = json.dumps(key) if "." in key else key
                table(f"{prefix}.{name}" if prefix else name, sub)

    table("", config)
    return "\n".join(lines) + "\n"
