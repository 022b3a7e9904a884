"""The real node of the local cloud: pods run in real containers next to the KWOK fleet.

Against ``real_cluster`` (control plane, KWOK fleet and a real node in me-central-1): a pod's
process really runs (its output and exit code come back through the API), a ClusterIP Service is
reached from another pod by its DNS names, a pod downloads from the in-region MinIO (bound to
the node's gateway), ``kubectl logs`` and ``kubectl exec`` work, the node
carries the fleet's region and zone labels, and stopping the node leaves nothing on the host.
"""

from __future__ import annotations

import pytest

from sovereign_dev import fleet, images
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.pytest_plugin import REAL_NODE_REGION

pytestmark = pytest.mark.timeout(600)

# Pods choose the real node the way a stack's pods choose a region: by labels, not by name.
_ON_REAL_NODE = {fleet.REGION_LABEL: REAL_NODE_REGION, "type": "real"}

_WEB_SERVER = """
import http.server, os
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {os.environ['HOSTNAME']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("", 8080), Hello).serve_forever()
"""

_GET_WITH_RETRY = """
import time, urllib.error, urllib.request
def get(url):
    deadline = time.monotonic() + 30
    while True:
        try:
            return urllib.request.urlopen(url, timeout=10).read().decode()
        except urllib.error.URLError as err:
            if not isinstance(err.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
"""


def _pod(name: str, script: str, *, labels: dict[str, str] | None = None,
         restart: str = "Never", ready_port: int | None = None) -> dict:
    container = {"name": "main", "image": images.BASE_IMAGE, "imagePullPolicy": "Never",
                 "command": ["python3", "-u", "-c", script]}
    if ready_port:
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": ready_port},
                                       "periodSeconds": 1}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeSelector": _ON_REAL_NODE, "restartPolicy": restart,
                     "terminationGracePeriodSeconds": 1, "containers": [container]}}


def _finished(core, namespace: str, name: str):
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def _web(core, namespace: str) -> str:
    """A Deployment-less web pod behind Service ``web``; returns the pod's name once it serves."""
    core.create_namespaced_pod(namespace, _pod("web-0", _WEB_SERVER, labels={"app": "web"},
                                              restart="Always", ready_port=8080))
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    wait_until(lambda: any(c.type == "Ready" and c.status == "True" for c in
                           core.read_namespaced_pod("web-0", namespace).status.conditions or []),
               timeout=120, message="pod web-0 Ready on the real node")
    return "web-0"


def test_real_node_carries_the_fleet_region_and_zone(real_cluster: DevCluster, real_api_client) -> None:
    from kubernetes import client

    node = client.CoreV1Api(real_api_client).read_node(real_cluster.node.name)
    region_zones = [z for g in real_cluster.fleet["groups"] if g["region"] == REAL_NODE_REGION
                    for z in g["zones"]]
    assert node.metadata.labels[fleet.REGION_LABEL] == REAL_NODE_REGION
    assert node.metadata.labels[fleet.ZONE_LABEL] == region_zones[0]
    # A kubelet of ours, not a KWOK simulation: real runtime, real address, no KWOK annotation.
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert node.status.node_info.kubelet_version == "v1.36.3"
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == real_cluster.pod_reachable_host


def test_pod_runs_for_real_and_reports_output_and_exit_code(
        real_cluster: DevCluster, real_api_client, real_namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(real_api_client)
    script = ("import platform; print('kernel', platform.release()); "
              "print('computed', sum(range(10)), flush=True); raise SystemExit(3)")
    core.create_namespaced_pod(real_namespace, _pod("once", script))
    pod = wait_until(lambda: _finished(core, real_namespace, "once"), timeout=120,
                     message="pod once finished")

    assert pod.spec.node_name == real_cluster.node.name
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    result = real_cluster.kubectl("logs", "-n", real_namespace, "once")
    assert result.returncode == 0, result.stderr
    logs = result.stdout
    # The host's kernel, seen from inside the container: the process really ran here.
    import platform

    assert logs.splitlines() == [f"kernel {platform.release()}", "computed 45"]


def test_cluster_ip_service_answers_by_dns_name_from_another_pod(
        real_cluster: DevCluster, real_api_client, real_namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(real_api_client)
    server = _web(core, real_namespace)
    names = [f"web.{real_namespace}.svc", f"web.{real_namespace}.svc.cluster.local", "web"]
    # Like any client of a fresh Service, retry a refused connection for a while: kube-proxy
    # programs the Service's rules shortly after its endpoint turns ready, not at that instant.
    script = _GET_WITH_RETRY + "".join(f"print({name!r}, get('http://{name}/'))\n" for name in names)
    core.create_namespaced_pod(real_namespace, _pod("client", script))
    pod = wait_until(lambda: _finished(core, real_namespace, "client"), timeout=120,
                     message="pod client finished")

    logs = real_cluster.kubectl("logs", "-n", real_namespace, "client").stdout
    assert pod.status.phase == "Succeeded", logs
    assert logs.splitlines() == [f"{name} hello from {server}" for name in names]


def test_pod_downloads_an_object_from_the_in_region_minio(
        real_cluster: DevCluster, real_api_client, real_namespace: str, real_minio_servers,
        minio_bucket_name: str) -> None:
    from kubernetes import client

    store = real_minio_servers[REAL_NODE_REGION]
    s3 = store.client()
    s3.create_bucket(Bucket=minio_bucket_name,
                     CreateBucketConfiguration={"LocationConstraint": REAL_NODE_REGION})
    s3.put_object(Bucket=minio_bucket_name, Key="weights/shard-0", Body=b"in-country bytes")
    url = s3.generate_presigned_url("get_object", ExpiresIn=600,
                                    Params={"Bucket": minio_bucket_name, "Key": "weights/shard-0"})
    assert url.startswith(f"http://{real_cluster.pod_reachable_host}:")
    core = client.CoreV1Api(real_api_client)
    core.create_namespaced_pod(real_namespace, _pod(
        "fetch", f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"))
    pod = wait_until(lambda: _finished(core, real_namespace, "fetch"), timeout=120,
                     message="pod fetch finished")

    logs = real_cluster.kubectl("logs", "-n", real_namespace, "fetch").stdout
    assert pod.status.phase == "Succeeded", logs
    assert logs.strip() == "in-country bytes"


def test_pod_reaches_the_apiserver_through_the_kubernetes_service_with_its_token(
        real_cluster: DevCluster, real_api_client, real_namespace: str) -> None:
    from kubernetes import client

    script = """
import json, ssl, urllib.request
secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{secrets}/token").read()
request = urllib.request.Request(
    "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews",
    method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode())
context = ssl.create_default_context(cafile=f"{secrets}/ca.crt")
print(json.load(urllib.request.urlopen(request, context=context))["status"]["userInfo"]["username"])
"""
    core = client.CoreV1Api(real_api_client)
    core.create_namespaced_pod(real_namespace, _pod("whoami", script))
    pod = wait_until(lambda: _finished(core, real_namespace, "whoami"), timeout=120,
                     message="pod whoami finished")

    logs = real_cluster.kubectl("logs", "-n", real_namespace, "whoami").stdout
    assert pod.status.phase == "Succeeded", logs
    assert logs.strip() == f"system:serviceaccount:{real_namespace}:default"


def test_kubectl_exec_runs_in_the_container(real_cluster: DevCluster, real_api_client,
                                            real_namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(real_api_client)
    server = _web(core, real_namespace)
    result = real_cluster.kubectl("exec", "-n", real_namespace, server, "--", "python3", "-c",
                                  "import os, socket; print(socket.gethostname(), os.getuid())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [server, "0"]
    failing = real_cluster.kubectl("exec", "-n", real_namespace, server, "--", "sh", "-c", "exit 7")
    assert failing.returncode == 7


def test_a_second_real_node_on_the_machine_is_refused_and_leaves_the_first_alone(
        real_cluster: DevCluster, real_api_client, real_namespace: str, tmp_path) -> None:
    from kubernetes import client

    from sovereign_dev.realnode import RealNodeError

    second = DevCluster(workdir=tmp_path / "second", real_node="eu-west-1", progress=False)
    with pytest.raises(RealNodeError) as refused:
        second.start()
    assert "another real node runs on this machine" in str(refused.value)
    assert str(real_cluster.node.logs_dir) in str(refused.value)
    assert not any(c.running() for c in second.components.values())
    # The refused cluster's teardown touched nothing of the running node: a pod still runs there.
    core = client.CoreV1Api(real_api_client)
    core.create_namespaced_pod(real_namespace, _pod("after", "print('still here')"))
    pod = wait_until(lambda: _finished(core, real_namespace, "after"), timeout=120,
                     message="pod after finished")
    assert pod.status.phase == "Succeeded"


def test_stopping_the_node_leaves_nothing_on_the_host_and_it_starts_again(
        real_cluster: DevCluster, real_api_client, real_namespace: str) -> None:
    """Stopped with a serving pod and a live exec session; then started again for later tests."""
    import subprocess
    import time

    from kubernetes import client

    core = client.CoreV1Api(real_api_client)
    server = _web(core, real_namespace)
    binary = real_cluster.bin_dirs["kubernetes"] / "kubectl"
    session = subprocess.Popen([str(binary), "--kubeconfig", real_cluster.kubeconfig, "exec", "-n",
                                real_namespace, server, "--", "sleep", "600"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = real_cluster.node
    try:
        wait_until(lambda: node.leftovers(), timeout=30, message="the node's footprint")
        node.stop()
        assert node.leftovers() == []
    finally:
        session.kill()
        session.wait()
        node.start(api=real_api_client, deadline=time.monotonic() + 120)
    # The pod that was running comes back on the restarted node.
    wait_until(lambda: any(c.type == "Ready" and c.status == "True" for c in
                           core.read_namespaced_pod(server, real_namespace).status.conditions or []),
               timeout=120, message="pod web-0 Ready again after the node restarted")


_KILLED_HARNESS = """
import sys, time
from pathlib import Path
from sovereign_dev import images
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.processes import ProcessLedger

dev = DevCluster(workdir=Path(sys.argv[1]), real_node="me-central-1", progress=False,
                 ledger=ProcessLedger(Path(sys.argv[2])))
dev.start()
dev.kubectl("run", "sleeper", f"--image={images.PAUSE_IMAGE}", "--image-pull-policy=Never",
            "--overrides", '{"spec": {"nodeSelector": {"type": "real"}}}', check=True)
wait_until(lambda: "Running" in dev.kubectl("get", "pod", "sleeper").stdout, timeout=120)
print("running", flush=True)
time.sleep(3600)
"""


def test_a_node_whose_harness_was_killed_is_swept_by_the_next_start(
        real_cluster: DevCluster, real_api_client, tmp_path) -> None:
    """SIGKILL leaves containers, shims, mounts and rules behind; the next real node removes
    them before it starts (what `dev up` after a killed `dev up` relies on)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from sovereign_dev.processes import ProcessLedger

    node = real_cluster.node
    node.stop()
    script, workdir, ledger = tmp_path / "harness.py", tmp_path / "killed", tmp_path / "ledger"
    script.write_text(_KILLED_HARNESS)
    harness = subprocess.Popen([sys.executable, str(script), str(workdir), str(ledger)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = harness.stdout.readline()
        assert line.strip() == "running", line + harness.stdout.read()
        harness.send_signal(signal.SIGKILL)
        harness.wait()
        # What `dev up`/`dev down` do after a killed run: end every process group it recorded.
        ProcessLedger(ledger).terminate()
        left = _pids_mentioning(node.node_dir) | _pids_in_cgroup(node.cgroup_parent)
        assert left, "the killed run should have left its containers and shims running"
        # Those named by the killed run's pods, sandboxes and namespaces (a new node reuses the
        # kubelet's own directory mount, not these).
        mounts = [m for m in _mount_points() if m.startswith(f"{node.node_dir}/")
                  and any(part in m for part in ("/pods/", "/k8s.io/", "/netns/"))]
        assert mounts, "the killed run should have left its container file systems mounted"
    finally:
        node.start(api=real_api_client, deadline=time.monotonic() + 180)

    assert not [pid for pid in left if os.path.exists(f"/proc/{pid}")]
    assert not set(mounts) & set(_mount_points())


def _pids_mentioning(path) -> set[int]:
    from pathlib import Path

    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def _pids_in_cgroup(cgroup: str) -> set[int]:
    from pathlib import Path

    root = Path("/sys/fs/cgroup/pids") / cgroup.lstrip("/")
    return {int(p) for procs in root.rglob("cgroup.procs") for p in procs.read_text().split()}


def _mount_points() -> list[str]:
    from pathlib import Path

    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
