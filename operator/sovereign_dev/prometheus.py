"""A real Prometheus (Debian's ``prometheus`` package) scraping the local cloud's model servers.

``PrometheusServer`` runs ``/usr/bin/prometheus`` on a free loopback port with one scrape job:
the operator's documented job for a Prometheus without the Prometheus Operator
(``sovereign.render.monitoring.scrape_job``), its relabelling unchanged, scraping pods at their
pod IPs, which this machine routes to the real node. ``query`` answers PromQL through the HTTP
API, as KEDA's Prometheus scaler asks it.

Debian builds Prometheus without its Kubernetes service discovery (``kubernetes_sd_configs`` is
an unknown field there), so the job's discovery is replaced by a ``file_sd_configs`` file that
``discover`` writes from the apiserver's pods: one target per container port, with the
``__meta_kubernetes_*`` labels Kubernetes discovery's pod role gives it (namespace, pod name and
IP, each pod label, container and port name and number). Everything after discovery (the keep
and copy rules, the scrape, the query) is the real Prometheus. The process runs in its own
session and is stopped by process group (``processes.OwnedServer``). Used by the real node's
end-to-end tests.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from sovereign.render.monitoring import pod_label_meta, scrape_job
from sovereign_dev.processes import OwnedServer, free_port

BINARY = Path("/usr/bin/prometheus")
#: Faster than the job's own interval, so a test sees a series within seconds.
TEST_SCRAPE_INTERVAL = "2s"
_LOG_TAIL_LINES = 30


class PrometheusStartError(RuntimeError):
    """Prometheus did not become ready; the message carries the tail of its log."""


class PrometheusServer(OwnedServer):
    """One Prometheus with the operator's model-server job over the pods of ``namespaces``."""

    def __init__(self, *, root: Path, namespaces: list[str]) -> None:
        self.root = root
        self.namespaces = namespaces
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def targets_path(self) -> Path:
        return self.root / "pods.json"

    def config(self) -> dict[str, Any]:
        """The scrape configuration: the documented job, its pod discovery read from ``targets_path``."""
        job = scrape_job()
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}], "discover() stands for the pod role only"
        job["scrape_interval"] = TEST_SCRAPE_INTERVAL
        job["file_sd_configs"] = [{"files": [str(self.targets_path)], "refresh_interval": TEST_SCRAPE_INTERVAL}]
        return {"global": {"scrape_interval": TEST_SCRAPE_INTERVAL, "evaluation_interval": TEST_SCRAPE_INTERVAL},
                "scrape_configs": [job]}

    def discover(self, api: client.ApiClient) -> list[dict[str, Any]]:
        """Write (and return) the targets Kubernetes discovery's pod role finds in ``namespaces``:
        one per container port of each running pod with an IP."""
        groups = []
        for namespace in self.namespaces:
            for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
                if not pod.status.pod_ip or pod.metadata.deletion_timestamp:
                    continue
                labels = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod.metadata.name,
                          "__meta_kubernetes_pod_ip": pod.status.pod_ip,
                          **{pod_label_meta(key): value for key, value in (pod.metadata.labels or {}).items()}}
                groups += [{"targets": [f"{pod.status.pod_ip}:{port.container_port}"],
                            "labels": {**labels, "__meta_kubernetes_pod_container_name": container.name,
                                       "__meta_kubernetes_pod_container_port_name": port.name or "",
                                       "__meta_kubernetes_pod_container_port_number": str(port.container_port)}}
                           for container in pod.spec.containers for port in container.ports or []]
        scratch = self.targets_path.with_suffix(".tmp")
        scratch.write_text(json.dumps(groups))
        scratch.replace(self.targets_path)  # Prometheus never reads half a file
        return groups

    def start(self, *, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        if not self.targets_path.exists():
            self.targets_path.write_text("[]")
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(BINARY), f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusStartError(f"prometheus exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise PrometheusStartError(f"prometheus not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with their labels, health and last error."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as answer:
            return json.load(answer)["data"]["activeTargets"]

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:])
