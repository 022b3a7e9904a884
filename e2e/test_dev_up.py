"""The README's main command, tried as a new user would: `sovereign dev up` in one terminal,
kubectl and `sovereign status` in another, `sovereign dev down` at the end.

Runs the real CLI as subprocesses (control plane, MinIO, operator, node agents on fake NVML).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sovereign_dev import build
from sovereign_dev.cluster import process_alive, wait_until
from sovereign_dev.devenv import SAMPLE_NAMESPACE, SAMPLE_STACK, read_state

pytestmark = pytest.mark.slow


def _sovereign(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # Wide enough that rich's tables do not fold a cell across lines.
    return subprocess.run([sys.executable, "-m", "sovereign", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "300"})


def test_dev_up_serves_a_sample_stack_to_kubectl_and_shows_gpu_faults(tmp_path: Path):
    workdir = tmp_path / "dev"
    log = tmp_path / "dev-up.log"
    kubectl = str(build.ensure("kubernetes") / "kubectl")
    with open(log, "w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "sovereign", "dev", "up", "--no-sample", "--no-view",
             "--nodes", "2", "--workdir", str(workdir)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    state: dict = {}
    try:
        wait_until(lambda: up.poll() is None and "kubeconfig:" in log.read_text(), timeout=600,
                   message=f"dev up to print the kubeconfig (log: {log})")
        state = read_state(workdir)
        kubeconfig = state["kubeconfig"]
        assert kubeconfig in log.read_text()

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
        try:
            up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, 9)
            raise
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in log.read_text()
    time.sleep(1)
    left = [pid for pid in state.get("pids", []) if process_alive(pid)]
    assert not left, f"processes of dev up still running after dev down: {left}"
