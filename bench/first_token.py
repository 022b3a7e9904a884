"""First token on the real node: "stack applied -> first token" next to the sum of its parts.

On a local cluster with a real node, an in-country MinIO and the operator as a ``sovereign run``
process, the data-path stack of ``sovereign_dev.datapath`` (one ``engine: llama-cpp`` model on
the real node, its GGUF file in the bucket) is applied, ``RUNS`` times, each time from nothing (the
stack deleted and its pods gone before the next apply). Measured in each run, on the same file:

- **stack applied -> first token**: from the create of the stack until a one-token chat
  completion through the model's Service answers (what a user waits for);
- **raw S3 copy**: boto3 downloading the same object from the same MinIO to local disk;
- **engine start -> first token**: the same llama-server build, on the same file, with the same
  threads, started as a plain process until a one-token completion answers;
- their sum, and the ratio of the first figure to it (the goal is at most 1.2).

And, to say what the difference is made of, the pod's own timeline (from its status; the
apiserver stores times to the second): apply -> pod created, created -> loader started, the
loader's copy, loader done -> server started, server started -> Ready.

The model is ``bench-llama-1g`` (``tinymodel.SIZED_MODELS``, about 1 GiB, so the copy and the
load are seconds, not milliseconds); ``SOVEREIGN_BENCH_FIRST_TOKEN_MODEL`` picks another, e.g.
``tiny-llama-a`` to see Kubernetes' fixed costs alone. Needs root and what the real node needs.
Run by ``python -m bench first_token``; prints its progress on stderr.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from kubernetes import client

from bench.real_stack import data_path_stage
from bench.result import Result
from sovereign_dev import build, engine, tinymodel
from sovereign_dev.cluster import wait_until
from sovereign_dev.datapath import MODEL, STACK, DataPath, ModelResources
from sovereign_dev.scenario import delete_stack

RUNS = int(os.environ.get("SOVEREIGN_BENCH_FIRST_TOKEN_RUNS", 3))
MODEL_NAME = os.environ.get("SOVEREIGN_BENCH_FIRST_TOKEN_MODEL", "bench-llama-1g")
#: One CPU for the model (and so one llama-server thread), in the pod and alone alike: the
#: machine has two, and the control plane, MinIO and the operator need the other.
RESOURCES = ModelResources(cpu="1", memory="3Gi", cache="2Gi")
NAMESPACE = "bench-first-token"
GOAL = 1.2


def run() -> list[Result]:
    build.ensure_all(["etcd", "kubernetes", "kwok", "minio", "kubenode", "runc", "coredns", "llama-server"])
    first_token = Result(f"stack applied -> first token ({MODEL_NAME})", "s")
    copy = Result("raw S3 copy of the same file (boto3 -> local disk)", "s")
    engine_alone = Result("engine start alone -> first token (same build, file, threads)", "s")
    parts = Result("sum of the parts (copy + engine start)", "s")
    ratio = Result(f"ratio first token / sum of parts (goal <= {GOAL})", "x")
    timeline = {step: Result(f"  of which: {step}", "s") for step in _STEPS}
    with tempfile.TemporaryDirectory(prefix="bench-first-token-") as tmp:
        work = Path(tmp)
        with data_path_stage(work=work, namespace=NAMESPACE, model=MODEL_NAME, resources=RESOURCES,
                             say=_say) as path:
            core = client.CoreV1Api(path.api)
            for attempt in range(1, RUNS + 1):
                _say(f"run {attempt}/{RUNS}: applying the stack")
                took, steps = _applied_to_first_token(path)
                _say(f"run {attempt}/{RUNS}: first token after {took:.2f}s "
                     + ", ".join(f"{k} {v:.0f}s" for k, v in steps.items()))
                delete_stack(path.api, NAMESPACE, STACK)
                wait_until(lambda: not core.list_namespaced_pod(NAMESPACE).items, timeout=120,
                           message="the stack's pods gone")
                copied = raw_copy(path, work / "copy")
                _say(f"run {attempt}/{RUNS}: raw S3 copy {copied:.2f}s")
                started = engine_alone_seconds(work / "copy" / tinymodel.model(MODEL_NAME).file_name, work / "engine")
                _say(f"run {attempt}/{RUNS}: engine alone {started:.2f}s")
                first_token.samples.append(took)
                copy.samples.append(copied)
                engine_alone.samples.append(started)
                parts.samples.append(copied + started)
                ratio.samples.append(round(took / (copied + started), 2))
                for step, seconds in steps.items():
                    timeline[step].samples.append(seconds)
    _say(f"median ratio {statistics.median(ratio.samples):.2f}x (goal <= {GOAL}x)")
    return [first_token, *timeline.values(), copy, engine_alone, parts, ratio]


_STEPS = ("apply -> pod created", "pod created -> loader started", "loader (copy in the pod)",
          "loader done -> server started", "server started -> Ready")


def _applied_to_first_token(path: DataPath) -> tuple[float, dict[str, float]]:
    applied_at = datetime.now().astimezone()
    started = time.monotonic()
    path.apply(model=MODEL_NAME)
    answered = path.wait_first_token(timeout=600)
    (pod,) = [p for p in client.CoreV1Api(path.api).list_namespaced_pod(
        path.namespace, label_selector=f"app.kubernetes.io/name={MODEL}").items]
    loader = pod.status.init_container_statuses[0].state.terminated
    server = pod.status.container_statuses[0].state.running
    ready = next(c.last_transition_time for c in pod.status.conditions if c.type == "Ready")
    moments = [applied_at, pod.metadata.creation_timestamp, loader.started_at, loader.finished_at,
               server.started_at, ready]
    steps = {step: max(0.0, (after - before).total_seconds())
             for step, before, after in zip(_STEPS, moments, moments[1:])}
    return answered - started, steps


def raw_copy(path: DataPath, directory: Path) -> float:
    """Seconds boto3 takes to download the model's object to ``directory`` (also ``bench.cache``'s)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / tinymodel.model(MODEL_NAME).file_name
    target.unlink(missing_ok=True)
    s3 = path.store.client()
    started = time.monotonic()
    s3.download_file(path.bucket, engine.model_key(MODEL_NAME), str(target))
    return time.monotonic() - started


def engine_alone_seconds(model: Path, root: Path) -> float:
    """Seconds from starting llama-server on ``model`` to its first token (also ``bench.cache``'s)."""
    server = engine.LlamaServer(model=model, alias=MODEL, root=root, threads=int(RESOURCES.cpu))
    started = time.monotonic()
    with server:
        server.chat(content="hello", max_tokens=1)
        return time.monotonic() - started


def _say(message: str) -> None:
    print(f"[first_token {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
