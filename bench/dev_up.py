"""``make dev`` to the first answer: binaries and images cached, how long until the sample's CPU
model on the real node answers a chat request (goal: under 3 minutes).

Each run starts ``sovereign dev up --no-view`` (what ``make dev`` runs once ``make setup`` has
nothing left to do) in a fresh work directory, as its own process, and asks
``sovereign chat chat-cpu`` every two seconds until it answers; it reports the time to the
kubeconfig line (the environment up, sample applied) and to the first answer, then stops the run
with SIGTERM (like ``sovereign dev down``) and times the teardown. Progress goes to stderr while
it runs. Needs root (the real node) and takes the machine's one real node for a few minutes.
Run with ``python -m bench dev_up``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.result import Result
from sovereign_dev import build, images, tinymodel
from sovereign_dev.devenv import CPU_MODEL, CPU_MODEL_SOURCE, REAL_NODE_IMAGES

RUNS = 2
#: A dev up that has not answered by then has failed the goal three times over.
GIVE_UP_S = 540


def run() -> list[Result]:
    _say("warming the caches (binaries, images, tiny model): not timed")
    build.ensure_all(["etcd", "kubernetes", "kwok", "minio", "kubenode", "runc", "coredns"])
    for name in ("pause", *REAL_NODE_IMAGES):
        images.ensure(name)
    tinymodel.ensure(CPU_MODEL_SOURCE)
    up = Result("dev up -> environment up, sample applied", "s")
    answer = Result("dev up -> first chat answer (goal < 180 s)", "s")
    teardown = Result("SIGTERM -> dev up stopped", "s")
    for attempt in range(1, RUNS + 1):
        with tempfile.TemporaryDirectory(prefix="bench-devup-") as tmp:
            times = _one(Path(tmp), attempt=attempt)
        up.samples.append(times[0])
        answer.samples.append(times[1])
        teardown.samples.append(times[2])
    return [up, answer, teardown]


def _one(tmp: Path, *, attempt: int) -> tuple[float, float, float]:
    log = tmp / "dev-up.log"
    env = {**os.environ, "COLUMNS": "300"}
    began = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sovereign", "dev", "up", "--workdir", str(tmp / "dev"),
             "--no-view", "--nodes", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    up_s = answer_s = None
    try:
        kubeconfig = str(tmp / "dev" / "cluster" / "kubeconfig")
        last = ""
        while answer_s is None:
            elapsed = time.monotonic() - began
            if process.poll() is not None:
                raise RuntimeError(f"dev up exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if elapsed > GIVE_UP_S:
                raise RuntimeError(f"no answer after {GIVE_UP_S}s; last: {last}; log: {log}")
            if up_s is None:
                if "kubeconfig:" in log.read_text():
                    up_s = round(elapsed, 1)
                    _say(f"run {attempt}: environment up after {up_s}s, asking {CPU_MODEL}")
                else:
                    time.sleep(1)
                    continue
            chat = subprocess.run(
                [sys.executable, "-m", "sovereign", "chat", CPU_MODEL, "Say hello", "--json",
                 "--kubeconfig", kubeconfig, "--timeout", "30"],
                capture_output=True, text=True, env=env, timeout=60)
            if chat.returncode == 0:
                answer_s = round(time.monotonic() - began, 1)
                reply = json.loads(chat.stdout)
                _say(f"run {attempt}: first answer after {answer_s}s from {reply['servedBy']}: "
                     f"{reply['answer'][:60]!r}")
            else:
                if chat.stderr.strip() != last:
                    last = chat.stderr.strip()
                    _say(f"run {attempt}: {elapsed:.0f}s: {last[:160]}")
                time.sleep(2)
    finally:
        stopping = time.monotonic()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        teardown_s = round(time.monotonic() - stopping, 1)
        _say(f"run {attempt}: stopped in {teardown_s}s (exit {process.returncode})")
    return up_s, answer_s, teardown_s


def _say(message: str) -> None:
    print(f"[dev_up] {message}", file=sys.stderr, flush=True)
