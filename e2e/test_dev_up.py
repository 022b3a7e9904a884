"""The README's main command, tried as a new user would: `sovereign dev up` in one terminal,
kubectl and `sovereign status` in another, `sovereign dev down` at the end; then the ways people
really end it (Ctrl-C, kill -9, a second `make dev`), a component that cannot start, and a fleet
of 64 GPU nodes per region (all on simulated nodes only, `--no-real-node`); last, the default run
with the real node, whose CPU model answers `sovereign chat` and the printed curl.

Runs the real CLI as subprocesses (control plane, MinIO, operator, node agents on fake NVML).
Whether every process of a run is gone is read from the run's process ledger
(``<workdir>/processes.jsonl``), by process group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sovereign_dev import build
from sovereign_dev.cluster import wait_until
from sovereign_dev.devenv import (
    CPU_MODEL, CPU_MODEL_SOURCE, LEDGER_FILE, SAMPLE_NAMESPACE, SAMPLE_STACK, read_state)
from sovereign_dev.processes import ProcessLedger, Recorded, live_groups

pytestmark = pytest.mark.slow

# The smallest environment: one GPU node in one region, nothing applied. These tests are about
# the harness's robustness, which a real node would only slow down (e2e/test_dev_chat.py runs one).
SMALL = ("--no-sample", "--no-view", "--nodes", "1", "--regions", "me-central-1", "--no-real-node")


def _sovereign(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # Wide enough that rich's tables do not fold a cell across lines.
    return subprocess.run([sys.executable, "-m", "sovereign", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "300"})


class DevUp:
    """One `sovereign dev up` running in the background, its output in a file."""

    def __init__(self, workdir: Path, log: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.log = log
        with open(log, "w") as out:
            # A session of its own: signals sent to it here reach it alone, as Ctrl-C in a
            # terminal reaches `make` and `sovereign` but not the children they put in theirs.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sovereign", "dev", "up", "--workdir", str(workdir), *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "COLUMNS": "300", **(env or {})})

    def output(self) -> str:
        return self.log.read_text()

    def wait_up(self, *, timeout: float = 300) -> dict:
        wait_until(lambda: "kubeconfig:" in self.output() or self.process.poll() is not None,
                   timeout=timeout, interval=1, message=f"dev up to print the kubeconfig ({self.log})")
        assert self.process.poll() is None, f"dev up exited early:\n{self.output()}"
        return read_state(self.workdir)

    def wait_exit(self, *, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def started(self) -> list[Recorded]:
        return ProcessLedger(self.workdir / LEDGER_FILE).entries()


def _running(entries: list[Recorded]) -> list[str]:
    return [f"{e.name} (pid {e.pid})" for e in _alive_of(entries)]


def _alive_of(entries: list[Recorded]) -> list[Recorded]:
    live = live_groups()
    return [e for e in entries if e.alive(live)]


def test_dev_up_serves_a_sample_stack_to_kubectl_and_shows_gpu_faults(tmp_path: Path):
    workdir = tmp_path / "dev"
    kubectl = str(build.ensure("kubernetes") / "kubectl")
    up = DevUp(workdir, tmp_path / "dev-up.log", "--no-sample", "--no-view", "--nodes", "2",
               "--no-real-node")
    try:
        state = up.wait_up(timeout=600)
        kubeconfig = state["kubeconfig"]
        assert kubeconfig in up.output()

        applied = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "apply", "-f",
                                  state["sample"]], capture_output=True, text=True)
        assert applied.returncode == 0, applied.stderr

        def ready() -> bool:
            out = subprocess.run(
                [kubectl, "--kubeconfig", kubeconfig, "get", "sstack", "-n", SAMPLE_NAMESPACE,
                 SAMPLE_STACK, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"],
                capture_output=True, text=True)
            return out.stdout.strip() == "True"

        wait_until(ready, timeout=300, interval=1, message="the sample stack to be Ready")
        table = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "get", "sstack", "-A"],
                               capture_output=True, text=True).stdout
        row = next(line for line in table.splitlines() if SAMPLE_STACK in line)
        assert SAMPLE_NAMESPACE in row and "True" in row, table

        status = _sovereign("status", "-n", SAMPLE_NAMESPACE, SAMPLE_STACK, "--kubeconfig", kubeconfig)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "Ready" in status.stdout and "gpu-mec1-0" in status.stdout

        fault = _sovereign("dev", "fault", "gpu-mec1-0", "--xid", "79", "--workdir", str(workdir))
        assert fault.returncode == 0, fault.stderr

        def fault_shown() -> str | None:
            shown = _sovereign("status", "--kubeconfig", kubeconfig).stdout
            return shown if "GPUHealthy=False" in shown else None

        shown = wait_until(fault_shown, timeout=120, interval=2,
                           message="GPUHealthy=False in sovereign status")
        assert "Xid79" in shown.replace(" ", "") or "XID 79" in shown
    finally:
        down = _sovereign("dev", "down", "--workdir", str(workdir), timeout=180)
        code = up.wait_exit()
    assert down.returncode == 0, down.stdout + down.stderr
    assert code == 0 and "stopped." in up.output()
    assert len(up.started()) >= 8  # control plane, two MinIO, operator, agents
    assert not _running(up.started()), "processes of dev up still running after dev down"


def test_dev_up_starts_again_after_ctrl_c_after_kill_9_and_twice_in_a_row(tmp_path: Path):
    workdir = tmp_path / "dev"

    first = DevUp(workdir, tmp_path / "first.log", *SMALL)
    first.wait_up()
    first.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait_exit() == 0, first.output()
    assert "stopped." in first.output() and "Traceback" not in first.output()
    assert not _running(first.started())

    # The next `make dev`, in the same work directory: its cluster is a new one.
    second = DevUp(workdir, tmp_path / "second.log", *SMALL)
    second.wait_up()
    left_by_second = second.started()
    second.process.kill()  # kill -9: no teardown at all
    second.wait_exit()
    assert len(_running(left_by_second)) >= 7, "a killed dev up leaves its children running"
    # What a killed real node leaves too: a container file system still mounted in the workdir.
    leftover_mount = workdir / "cluster" / "rootfs"
    leftover_mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(leftover_mount)], check=True)

    third = DevUp(workdir, tmp_path / "third.log", *SMALL)
    state = third.wait_up()
    assert re.search(r"stopped \d+ processes left running by an earlier run", third.output())
    assert not _running(left_by_second)
    assert str(leftover_mount) not in Path("/proc/self/mountinfo").read_text()
    # A second `make dev` while this one runs is refused, and leaves this one alone.
    again = _sovereign("dev", "up", "--workdir", str(workdir), *SMALL)
    assert again.returncode == 3
    assert f"a dev environment already runs from {workdir} (pid {third.process.pid})" in again.stdout
    assert third.process.poll() is None and not set(third.started()) - set(_alive_of(third.started()))
    nodes = subprocess.run([str(build.ensure("kubernetes") / "kubectl"), "--kubeconfig",
                            state["kubeconfig"], "get", "nodes", "gpu-mec1-0"],
                           capture_output=True, text=True)
    assert nodes.returncode == 0 and " Ready " in nodes.stdout, nodes.stderr

    down = _sovereign("dev", "down", "--workdir", str(workdir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert third.wait_exit() == 0
    assert not _running(third.started())
    assert _sovereign("dev", "down", "--workdir", str(workdir)).returncode == 1


def _started_etcd(up: DevUp) -> None:
    wait_until(lambda: (read_state(up.workdir) or {}).get("pid") == up.process.pid
               and any(e.name == "etcd" for e in up.started()),
               timeout=120, interval=0.2, message="dev up to start etcd")


def test_dev_down_stops_a_dev_up_that_is_still_starting_or_was_killed(tmp_path: Path):
    workdir = tmp_path / "dev"
    starting = DevUp(workdir, tmp_path / "starting.log", *SMALL)
    _started_etcd(starting)

    down = _sovereign("dev", "down", "--workdir", str(workdir))

    assert down.returncode == 0, down.stdout + down.stderr
    assert starting.wait_exit() == 0
    assert "kubeconfig:" not in starting.output(), "the start finished before dev down came"
    assert "stopped." in starting.output() and "Traceback" not in starting.output()
    assert not _running(starting.started())

    killed = DevUp(workdir, tmp_path / "killed.log", *SMALL)
    _started_etcd(killed)
    killed.process.kill()
    killed.wait_exit()
    assert _running(killed.started())

    down = _sovereign("dev", "down", "--workdir", str(workdir))

    assert down.returncode == 0 and "stopped." in down.stdout, down.stdout + down.stderr
    assert not _running(killed.started())


def test_a_component_that_cannot_start_is_named_and_everything_is_torn_down(tmp_path: Path):
    # A build cache whose MinIO binary is broken; the rest is the real cache.
    cache = tmp_path / "cache" / "bin"
    cache.mkdir(parents=True)
    for name in ("etcd", "kubernetes", "kwok", "karpenter"):
        (cache / build.COMPONENTS[name].key).symlink_to(build.ensure(name))
    broken = cache / build.COMPONENTS["minio"].key
    broken.mkdir()
    (broken / "minio").write_text("#!/bin/sh\necho 'FATAL unable to open the data directory: "
                                  "simulated broken build' >&2\nexit 1\n")
    (broken / "minio").chmod(0o755)

    up = DevUp(tmp_path / "dev", tmp_path / "dev-up.log", *SMALL,
               env={"SOVEREIGN_CACHE_DIR": str(tmp_path / "cache")})
    code = up.wait_exit(timeout=300)

    out = up.output()
    assert code == 3, out
    log = tmp_path / "dev" / "minio" / "me-central-1" / "minio.log"
    assert f"sovereign dev up failed: minio (me-central-1) did not start (log: {log})" in out
    assert "simulated broken build" in out
    assert "Traceback" not in out
    started = {entry.name for entry in up.started()}
    assert {"etcd", "kube-apiserver", "kwok", "minio-me-central-1"} <= started
    assert not _running(up.started())


def test_an_unforeseen_failure_is_one_paragraph_and_its_traceback_goes_to_a_file(tmp_path: Path):
    # An upstream CRD file that is not YAML: nothing in dev up expects that.
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "broken.yaml").write_text("kind: [CustomResourceDefinition\n")

    up = DevUp(tmp_path / "dev", tmp_path / "dev-up.log", *SMALL,
               env={"SOVEREIGN_UPSTREAM_CRDS": str(crds)})
    code = up.wait_exit(timeout=300)

    out = up.output()
    trace = tmp_path / "dev" / "logs" / "dev-up-error.log"
    assert code == 3, out
    assert re.search(r"sovereign dev up failed: \w+Error while starting the control plane: .+; "
                     rf"the traceback is in {re.escape(str(trace))}", out), out
    assert "expected ',' or ']'" in out and "Traceback" not in out
    assert trace.read_text().startswith("Traceback (most recent call last)")
    assert {"etcd", "kube-apiserver"} <= {entry.name for entry in up.started()}
    assert not _running(up.started())


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


# 128 agent processes of about 75 MiB each (the Kubernetes client is most of it), plus the rest.
@pytest.mark.skipif(_available_gib() < 12, reason="--nodes 64 runs 128 agent processes: ~10 GiB")
def test_sixty_four_gpu_nodes_per_region_come_up_each_with_its_own_agent(tmp_path: Path):
    workdir = tmp_path / "dev"
    up = DevUp(workdir, tmp_path / "dev-up.log", "--no-sample", "--no-view", "--nodes", "64",
               "--no-real-node")
    try:
        state = up.wait_up(timeout=600)
        agents = state["agent_metrics"]
        assert len(agents) == 128
        assert len(set(agents.values())) == 128
        # Each port is its own agent's: the metrics it serves carry its node's name.
        for node, url in agents.items():
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert f'Hostname="{node}"' in resp.read().decode(), (node, url)
    finally:
        down = _sovereign("dev", "down", "--workdir", str(workdir), timeout=300)
        code = up.wait_exit(timeout=300)
    assert down.returncode == 0 and code == 0, up.output()
    assert not _running(up.started())


@pytest.mark.realnode
def test_dev_up_with_the_real_node_answers_sovereign_chat_and_curl(tmp_path: Path):
    """The README's promise: `make dev`, then `sovereign chat` gets an answer from the CPU model
    that really runs on the real node; the printed curl gets one too. Prints the time from
    `dev up` to the first answer (the bench's figure; not asserted here)."""
    workdir = tmp_path / "dev"
    began = time.monotonic()
    up = DevUp(workdir, tmp_path / "dev-up.log", "--no-view", "--nodes", "1",
               "--regions", "me-central-1")
    try:
        state = up.wait_up(timeout=600)
        kubeconfig = state["kubeconfig"]
        environment_s = time.monotonic() - began

        def answered() -> subprocess.CompletedProcess | None:
            chat = _sovereign("chat", CPU_MODEL, "Say hello", "--json", "--kubeconfig", kubeconfig)
            return chat if chat.returncode == 0 else None

        chat = wait_until(answered, timeout=300, interval=2,
                          message=f"`sovereign chat {CPU_MODEL}` to answer ({up.log})")
        print(f"\ndev up -> environment up {environment_s:.0f}s, -> first chat answer "
              f"{time.monotonic() - began:.0f}s")
        reply = json.loads(chat.stdout)
        assert reply["model"] == CPU_MODEL and reply["servedBy"] == CPU_MODEL_SOURCE
        assert (reply["namespace"], reply["stack"]) == (SAMPLE_NAMESPACE, SAMPLE_STACK)
        assert reply["answer"].strip()
        # The plain form prints the answer, and says what served it on stderr.
        plain = _sovereign("chat", CPU_MODEL, "Say hello", "--kubeconfig", kubeconfig)
        assert plain.returncode == 0 and plain.stdout.strip()
        assert f"-- {CPU_MODEL} ({SAMPLE_NAMESPACE}/{SAMPLE_STACK}), served by {CPU_MODEL_SOURCE}" \
            in plain.stderr
        # The curl dev up prints, as a user would paste it.
        curl = next(line.removeprefix("chat with curl: ") for line in up.output().splitlines()
                    if line.startswith("chat with curl: "))
        completion = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True,
                                               text=True, timeout=60, check=True).stdout)
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"].strip()
        # A model the sample does not have is named, with those it has.
        unknown = _sovereign("chat", "summariser", "hi", "--kubeconfig", kubeconfig)
        assert unknown.returncode == 1
        assert (f"no stack in any namespace declares a model named 'summariser'; the models there: "
                f"chat ({SAMPLE_NAMESPACE}/{SAMPLE_STACK}), {CPU_MODEL} "
                f"({SAMPLE_NAMESPACE}/{SAMPLE_STACK})") in unknown.stderr
    finally:
        down = _sovereign("dev", "down", "--workdir", str(workdir), timeout=300)
        code = up.wait_exit(timeout=300)
    assert down.returncode == 0 and code == 0, up.output()
    assert not _running(up.started())
    # The real node took its host-wide state with it.
    assert not Path("/run/sovereign-stack/realnode.json").exists()
