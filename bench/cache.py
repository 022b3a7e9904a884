"""Shared model cache on the real node: cold and warm first token, and what a second replica reads.

On a local cluster with a real node, an in-country MinIO, the local cloud's ReadWriteMany class
on the real node (``provisioner.SHARED_CLASS``) and the operator as a ``sovereign run`` process,
the data-path stack (``sovereign_dev.datapath``: one ``engine: llama-cpp`` model on the real
node) is applied with ``cache.layout: SharedVolume``, ``RUNS`` times. Measured in each run:

- **cold (empty cache): stack applied -> first token**, and of which: apply -> the loader Job
  created, the Job's fill (its start to its completion, as the Job's status says), the Job done ->
  the Deployment created (the operator's gate), Deployment created -> replica Ready;
- **bytes read from S3 when a second replica starts**: MinIO's own count of bytes sent (its
  metrics), from scaling to two replicas until both are Ready (goal 0; the operator's periodic
  store checks are all it may count), and how long the second replica took to be Ready;
- **warm (cache present): stack applied -> first token**: the stack deleted (its claim kept, the
  store's deletionPolicy being Retain) and applied again: the new loader Job finds every file
  verified and downloads nothing (its report's ``downloadedBytes``, also reported);
- next to them, as in ``bench.first_token``, the sum of the parts: a raw boto3 copy of the same
  object plus llama-server alone from start to first token on the same file and threads.

The model is ``bench-llama-1g`` (about 1 GiB); ``SOVEREIGN_BENCH_CACHE_MODEL`` picks another.
Needs root and what the real node needs. Run by ``python -m bench cache``; progress on stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from kubernetes import client

from bench.first_token import engine_alone_seconds, raw_copy
from bench.real_stack import data_path_stage
from bench.result import Result
from sovereign.render import names
from sovereign_dev import build, tinymodel
from sovereign_dev.cluster import wait_until
from sovereign_dev.datapath import MODEL, STACK, DataPath, ModelResources, ready
from sovereign_dev.provisioner import SHARED_CLASS
from sovereign_dev.scenario import delete_stack

RUNS = int(os.environ.get("SOVEREIGN_BENCH_CACHE_RUNS", 3))
MODEL_NAME = os.environ.get("SOVEREIGN_BENCH_CACHE_MODEL", "bench-llama-1g")
#: Half a CPU per replica (llama-server gets one thread, as in bench.first_token): two replicas
#: and the application fit the real node beside the control plane.
RESOURCES = ModelResources(cpu="500m", memory="3Gi", cache="2Gi")
SHARED = {"layout": "SharedVolume", "storageClassName": SHARED_CLASS}
NAMESPACE = "bench-cache"
_STEPS = ("apply -> loader Job created", "loader Job: fill", "Job done -> Deployment created",
          "Deployment created -> replica Ready")


def run() -> list[Result]:
    build.ensure_all(["etcd", "kubernetes", "kwok", "minio", "kubenode", "runc", "coredns", "llama-server"])
    cold = Result(f"cold (empty cache): stack applied -> first token ({MODEL_NAME})", "s")
    steps = {step: Result(f"  of which: {step}", "s") for step in _STEPS}
    second_bytes = Result("bytes read from S3 while a second replica starts (goal 0)", "B")
    second_ready = Result("scale 1 -> 2: second replica Ready", "s")
    warm = Result("warm (cache present): stack applied -> first token", "s")
    warm_bytes = Result("  of which bytes the warm loader Job downloaded", "B")
    copy = Result("raw S3 copy of the same file (boto3 -> local disk)", "s")
    engine_alone = Result("engine start alone -> first token (same build, file, threads)", "s")
    parts = Result("sum of the parts (copy + engine start)", "s")
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        with data_path_stage(work=work, namespace=NAMESPACE, model=MODEL_NAME, resources=RESOURCES,
                             say=_say) as path:
            for attempt in range(1, RUNS + 1):
                took, timeline = _cold(path)
                _say(f"run {attempt}/{RUNS}: cold first token after {took:.2f}s "
                     + ", ".join(f"{k} {v:.0f}s" for k, v in timeline.items()))
                sent, second = _second_replica(path)
                _say(f"run {attempt}/{RUNS}: second replica Ready after {second:.2f}s, "
                     f"S3 sent {sent} bytes meanwhile")
                again, downloaded = _warm(path)
                _say(f"run {attempt}/{RUNS}: warm first token after {again:.2f}s "
                     f"(loader downloaded {downloaded} bytes)")
                copied = raw_copy(path, work / "copy")
                started = engine_alone_seconds(work / "copy" / tinymodel.model(MODEL_NAME).file_name,
                                               work / "engine")
                _say(f"run {attempt}/{RUNS}: raw copy {copied:.2f}s, engine alone {started:.2f}s")
                _forget_caches(path)
                cold.samples.append(took)
                for step, seconds in timeline.items():
                    steps[step].samples.append(seconds)
                second_bytes.samples.append(sent)
                second_ready.samples.append(second)
                warm.samples.append(again)
                warm_bytes.samples.append(downloaded)
                copy.samples.append(copied)
                engine_alone.samples.append(started)
                parts.samples.append(copied + started)
    return [cold, *steps.values(), second_bytes, second_ready, warm, warm_bytes, copy, engine_alone, parts]


def _cold(path: DataPath) -> tuple[float, dict[str, float]]:
    applied_at = datetime.now().astimezone()
    started = time.monotonic()
    path.apply(model=MODEL_NAME, cache=SHARED)
    answered = path.wait_first_token(timeout=600)
    job = _job(path)
    deployment = client.AppsV1Api(path.api).read_namespaced_deployment(MODEL, path.namespace)
    (pod,) = path.model_pods()
    ready_at = next(c.last_transition_time for c in pod.status.conditions if c.type == "Ready")
    moments = [applied_at, job.metadata.creation_timestamp, job.status.start_time, job.status.completion_time,
               deployment.metadata.creation_timestamp, ready_at]
    # The fill is the Job's own start -> completion; its creation -> start is the pod's scheduling.
    timeline = {_STEPS[0]: moments[1] - moments[0], _STEPS[1]: moments[3] - moments[2],
                _STEPS[2]: moments[4] - moments[3], _STEPS[3]: moments[5] - moments[4]}
    return answered - started, {k: max(0.0, v.total_seconds()) for k, v in timeline.items()}


def _second_replica(path: DataPath) -> tuple[int, float]:
    before = path.store.bytes_sent()
    started = time.monotonic()
    path.apply(model=MODEL_NAME, cache=SHARED, replicas=2)
    wait_until(lambda: len(path.model_pods()) == 2 and all(map(ready, path.model_pods())), timeout=300,
               message="two ready replicas")
    took = time.monotonic() - started
    return path.store.bytes_sent() - before, took


def _warm(path: DataPath) -> tuple[float, int]:
    delete_stack(path.api, path.namespace, STACK)
    # Gone altogether: a terminating replica still serves, and kube-proxy sends a Service with
    # no ready endpoint to one (the new stack's Service selects it too).
    wait_until(lambda: not path.model_pods(terminating=True), timeout=120, message="the replicas gone")
    started = time.monotonic()
    path.apply(model=MODEL_NAME, cache=SHARED)
    answered = path.wait_first_token(timeout=600)
    cache = (path.stack().get("status") or {}).get("models", [{}])[0].get("cache") or {}
    return answered - started, int(cache.get("downloadedBytes", -1))


def _forget_caches(path: DataPath) -> None:
    """The stack and its retained cache claims gone, so the next run starts cold."""
    delete_stack(path.api, path.namespace, STACK)
    core = client.CoreV1Api(path.api)
    wait_until(lambda: not path.model_pods(terminating=True), timeout=120, message="the replicas gone")
    core.delete_collection_namespaced_persistent_volume_claim(path.namespace, label_selector=_CACHE_SELECTOR)
    wait_until(lambda: not core.list_namespaced_persistent_volume_claim(
        path.namespace, label_selector=_CACHE_SELECTOR).items, timeout=120, message="the cache claims gone")


_CACHE_SELECTOR = f"{names.STACK_LABEL}={STACK},{names.COMPONENT_LABEL}={names.Component.MODEL_CACHE.value}"


def _job(path: DataPath) -> client.V1Job:
    (job,) = client.BatchV1Api(path.api).list_namespaced_job(path.namespace, label_selector=_CACHE_SELECTOR).items
    return job


def _say(message: str) -> None:
    print(f"[cache {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
