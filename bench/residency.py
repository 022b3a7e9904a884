"""Residency benchmarks: admission latency under load, and violation-to-status time.

Against a local control plane, with the operator as a real ``sovereign run`` subprocess that has
applied the residency admission policies and serves its lookup webhooks on loopback:

- admission latency at ``RATES`` requests per second: server-side dry-run Pod creates
  (``dryRun=All`` runs the whole admission chain) into a namespace governed by an enforcing
  stack, where the apiserver's residency policies mutate (region affinity) and validate each pod
  (no webhook is called: the pods name no node), next to the same creates into an ungoverned
  namespace, in the same run, round for round; and, into the governed namespace, pods that name
  an allowed region already (as the operator's own pods do), which are validated but need no
  mutation. An open loop: request ``i`` is due at ``start + i / rate`` and is sent by whichever
  of ``THREADS`` threads is free; its latency runs from when it was due, not from when it was
  sent, so time spent waiting for a free thread (queueing) counts. ``ROUNDS`` rounds of ``ROUND_SECONDS`` per rate and namespace, alternating;
  each round gives the p50/p99 and the rate the sends achieved; the ratio of each governed p99 to
  the ungoverned one of the same round; the kube-apiserver's CPU time per request of each series
  (which, unlike latency, other work on the machine does not change); and, for the governed plain
  pods, the CPU share of the operator, etcd, the kube-apiserver and this load generator;
- violation -> status: in a namespace whose stack is in Audit mode (audit period
  ``AUDIT_SECONDS``), a pod pinned to eu-west-1 is admitted with a warning; the clock runs
  from the create call's answer to the stack's ``status.violations`` listing the pod (polled
  every ``POLL_SECONDS``). The ``VIOLATIONS`` creates are spread over the audit timer's phase:
  the median is the typical delay, the max the worst (one period plus one audit pass).

Every loop is bounded in count and in time. The machine is shared (load generator, apiserver,
etcd and operator on the same cores), so the figures are an upper bound for a real cluster.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config
from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev import build
from sovereign_dev.cluster import DevCluster, free_port, wait_until
from sovereign_dev.scenario import OperatorProcess, WebhookOperator
from sovereign.kube.admission import CONFIGURATION_NAME
from sovereign.render.names import GOVERNED_LABEL

from bench.result import Result

RATES = (50, 200, 500)
ROUNDS = 3
ROUND_SECONDS = 8.0
WARMUP_REQUESTS = 50
THREADS = 64
AUDIT_SECONDS = 2.0
VIOLATIONS = 5
POLL_SECONDS = 0.05
WAIT = 120.0  # seconds; generous bound on every wait, the machine is shared
REGION = "topology.kubernetes.io/region"
ENFORCED, AUDITED, FREE = "bench-enforce", "bench-audit", "bench-free"
OPERATOR = "the operator"
APISERVER = "kube-apiserver"


def run() -> list[Result]:
    build.ensure_all(["etcd", "kubernetes", "kwok"])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-residency-") as tmp, \
            DevCluster(workdir=Path(tmp) / "cluster", progress=False) as cluster:
        api = cluster.api_client()
        metrics_port = free_port()
        operator = WebhookOperator(kubeconfig=cluster.kubeconfig, namespaces=[ENFORCED, AUDITED],
                                   log=Path(tmp) / "operator.log", resync_seconds=60,
                                   audit_seconds=AUDIT_SECONDS, metrics_port=metrics_port).start()
        try:
            for namespace, enforcement in ((ENFORCED, "Enforce"), (AUDITED, "Audit")):
                _governed_namespace(api, namespace, enforcement=enforcement, operator=operator)
            _wait_for_webhooks(api, operator)
            _namespace(api, FREE)
            load = _LoadClient(cluster, threads=THREADS)
            for namespace in (FREE, ENFORCED):
                load.drive(namespace=namespace, rate=RATES[0], count=WARMUP_REQUESTS)
            processes = {OPERATOR: operator.process.pid, "etcd": cluster.components["etcd"].process.pid,
                         APISERVER: cluster.components["kube-apiserver"].process.pid,
                         "the load generator": os.getpid()}
            for rate in RATES:
                results += _admission_latency(load, rate=rate, processes=processes)
            load.close()
            results.append(_violation_to_status(api))
        except BaseException:
            print(operator.tail(), file=sys.stderr)
            raise
        finally:
            operator.stop()
            api.close()
    return results


def _governed_namespace(api: client.ApiClient, name: str, *, enforcement: str, operator: OperatorProcess) -> None:
    """A namespace holding one stack allowed only me-central-1, once the operator governs it and
    the apiserver's residency policies act there (a new pod gets the region affinity)."""
    core = client.CoreV1Api(api)
    _namespace(api, name)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, name, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack", "metadata": {"name": "citizen"},
        "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"], "enforcement": enforcement}}})
    _wait_alive(operator, lambda: (core.read_namespace(name).metadata.labels or {}).get(GOVERNED_LABEL) == "true",
                f"namespace {name} labelled {GOVERNED_LABEL}")
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
             "spec": {"containers": [{"name": "app", "image": "registry.gov.qa/app:1"}]}}
    _wait_alive(operator, lambda: core.create_namespaced_pod(name, probe, dry_run="All").spec.affinity,
                f"the residency policies in {name}")


def _namespace(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: core.read_namespaced_service_account("default", name), timeout=WAIT,
               message=f"the default ServiceAccount of {name}")


def _wait_for_webhooks(api: client.ApiClient, operator: OperatorProcess) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    _wait_alive(operator, lambda: admission.read_validating_webhook_configuration(CONFIGURATION_NAME),
                "the residency webhook configuration")


def _wait_alive(operator: OperatorProcess, predicate: Callable[[], Any], message: str) -> Any:
    def check() -> Any:
        if not operator.running():
            raise RuntimeError(f"the operator exited while waiting for {message}:\n{operator.tail()}")
        return predicate()

    try:
        return wait_until(check, timeout=WAIT, message=message)
    except TimeoutError as err:
        raise TimeoutError(f"{err}\noperator log:\n{operator.tail()}") from err


# --- admission latency ----------------------------------------------------------------------------


class _LoadClient:
    """Dry-run Pod creates at a fixed rate from a bounded thread pool."""

    def __init__(self, cluster: DevCluster, *, threads: int) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=cluster.kubeconfig, client_configuration=configuration)
        # One connection per thread, reused: the clock measures requests, not TLS handshakes.
        configuration.connection_pool_maxsize = threads
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.threads = threads
        self.pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
                    "spec": {"containers": [{"name": "app", "image": "registry.gov.qa/app:1"}]}}
        # As the operator's own pods and those of workloads that name their region arrive.
        self.pinned_pod = {**self.pod, "spec": {**self.pod["spec"], "nodeSelector": {REGION: "me-central-1"}}}

    def drive(self, *, namespace: str, rate: float, count: int, pinned: bool = False) -> tuple[list[float], float]:
        """Send ``count`` requests at ``rate`` per second, of a plain pod or (``pinned``) one that
        names an allowed region already; their latencies (s, from when each was due) and the rate
        the sends achieved. The answer must carry the region affinity exactly when a plain pod went
        to the governed namespace (the mutating policy ran, or had nothing to do).

        Stops sending once ``count / rate`` seconds plus a grace of ``WAIT`` have passed, so an
        overloaded cluster ends the round instead of running on; any failure ends the benchmark.
        """
        latencies: list[float] = []
        sends: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        issued = iter(range(count))
        began = time.monotonic()
        deadline = began + count / rate + WAIT
        body_sent = self.pinned_pod if pinned else self.pod
        mutated = namespace == ENFORCED and not pinned

        def worker() -> None:
            while True:
                with lock:
                    index = next(issued, None)
                if index is None or failures or time.monotonic() > deadline:
                    return
                due = began + index / rate
                time.sleep(max(0.0, due - time.monotonic()))
                sent = time.monotonic()
                try:
                    body = self.core.create_namespaced_pod(namespace, body_sent, dry_run="All",
                                                           _preload_content=False).data
                    failure = None if (b'"affinity"' in body) == mutated else (
                        f"the region affinity {'missing' if mutated else 'present'} in {namespace}: {body[:300]!r}")
                except client.ApiException as err:
                    failure = f"HTTP {err.status}: {str(err.body)[:300]}"
                took = time.monotonic() - due
                with lock:
                    if failure:
                        failures.append(failure)
                    latencies.append(took)
                    sends.append(sent)

        workers = [threading.Thread(target=worker, name=f"load-{n}", daemon=True) for n in range(self.threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 10)
        if failures:
            raise RuntimeError(f"{len(failures)} admission request(s) failed; the first: {failures[0]}")
        if len(latencies) < count:
            raise RuntimeError(f"only {len(latencies)} of {count} requests answered within "
                               f"{time.monotonic() - began:.0f} s")
        return latencies, (count - 1) / (max(sends) - min(sends))

    def close(self) -> None:
        self.api.close()


def _admission_latency(load: _LoadClient, *, rate: int, processes: dict[str, int]) -> list[Result]:
    """``ROUNDS`` rounds at ``rate``, each one of plain pods into the ungoverned namespace (the
    baseline), then into the governed one (mutated and validated), then of pods that name an
    allowed region already into the governed one (validated only: what the operator renders)."""
    count = int(rate * ROUND_SECONDS)
    prefix = f"dry-run Pod create at {rate} rps, open loop"
    governed = _ClientFigures(f"{prefix}, governed, plain pod (region affinity added, then validated)", count)
    pinned = _ClientFigures(f"{prefix}, governed, pod naming an allowed region (validated only)", count)
    baseline = _ClientFigures(f"{prefix}, ungoverned baseline", count)
    ratio = Result(f"{prefix}: governed plain pod p99 / ungoverned p99 (same round)", "x")
    ratio_pinned = Result(f"{prefix}: governed pinned pod p99 / ungoverned p99 (same round)", "x")
    cpu = {name: Result(f"{prefix}, governed plain pods: CPU of {name} (% of one core)", "%") for name in processes}
    # The apiserver's CPU time per request does not depend on what else the machine runs.
    apiserver = processes[APISERVER]
    per_request = {series: Result(f"{prefix}: kube-apiserver CPU per request, {series}", "ms")
                   for series in ("ungoverned", "governed plain pod", "governed pinned pod")}

    def timed(series: str, **drive: Any) -> tuple[list[float], float]:
        used = _cpu_seconds(apiserver)
        outcome = load.drive(rate=rate, count=count, **drive)
        per_request[series].samples.append(round(1000 * (_cpu_seconds(apiserver) - used) / count, 2))
        return outcome

    for _ in range(ROUNDS):
        free = baseline.add(*timed("ungoverned", namespace=FREE))
        used_before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
        began = time.monotonic()
        held = governed.add(*timed("governed plain pod", namespace=ENFORCED))
        elapsed = time.monotonic() - began
        for name, pid in processes.items():
            cpu[name].samples.append(round(100 * (_cpu_seconds(pid) - used_before[name]) / elapsed, 1))
        kept = pinned.add(*timed("governed pinned pod", namespace=ENFORCED, pinned=True))
        ratio.samples.append(round(held / free, 2))
        ratio_pinned.samples.append(round(kept / free, 2))
    return [*governed.results, *pinned.results, *baseline.results, ratio, ratio_pinned, *per_request.values(),
            *cpu.values()]


class _ClientFigures:
    """Client-side p50, p99 and achieved rate of a series of rounds."""

    def __init__(self, prefix: str, count: int) -> None:
        self.p50 = Result(f"{prefix}: client p50", "ms")
        self.p99 = Result(f"{prefix}: client p99", "ms")
        self.achieved = Result(f"{prefix}: achieved rate ({count} requests per round)", "rps")

    def add(self, latencies: list[float], reached: float) -> float:
        """Record a round; its p99 (s)."""
        self.p50.samples.append(_ms(_percentile(latencies, 0.50)))
        self.p99.samples.append(_ms(_percentile(latencies, 0.99)))
        self.achieved.samples.append(round(reached, 1))
        return _percentile(latencies, 0.99)

    @property
    def results(self) -> list[Result]:
        return [self.p50, self.p99, self.achieved]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- violation -> status --------------------------------------------------------------------------


def _violation_to_status(api: client.ApiClient) -> Result:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    result = Result(f"Audit-mode pod outside the regions -> listed in status.violations "
                    f"(audit period {AUDIT_SECONDS:g} s)", "s")

    def listed() -> set[str]:
        stack = custom.get_namespaced_custom_object(GROUP, VERSION, AUDITED, PLURAL, "citizen")
        return {v["name"] for v in (stack.get("status") or {}).get("violations") or [] if v["kind"] == "Pod"}

    # The first audit has run once the stack's ResidencyCompliant condition is there.
    wait_until(lambda: any(c["type"] == "ResidencyCompliant" for c in (custom.get_namespaced_custom_object(
        GROUP, VERSION, AUDITED, PLURAL, "citizen").get("status") or {}).get("conditions") or []),
               timeout=WAIT, message="the first audit")
    for attempt in range(VIOLATIONS):
        # Each clear is seen just after an audit; waiting a growing share of a period spreads
        # the creates evenly over the audit timer's phase, so max is the worst case.
        time.sleep(AUDIT_SECONDS * attempt / VIOLATIONS)
        result.samples.append(_one_violation(core, listed, name=f"abroad-{attempt}"))
    return result


def _one_violation(core: client.CoreV1Api, listed: Callable[[], set[str]], *, name: str) -> float:
    """Seconds from creating pod ``name`` outside the regions to ``listed()`` naming it; then
    delete it and wait until the audit has cleared it, so the next attempt starts clean."""
    core.create_namespaced_pod(AUDITED, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": {REGION: "eu-west-1"},
                 "containers": [{"name": "app", "image": "registry.gov.qa/app:1"}]}})
    created = time.monotonic()
    wait_until(lambda: name in listed(), timeout=WAIT, interval=POLL_SECONDS,
               message=f"pod {name} in status.violations")
    took = round(time.monotonic() - created, 2)
    core.delete_namespaced_pod(name, AUDITED, grace_period_seconds=0)
    wait_until(lambda: name not in listed(), timeout=WAIT, interval=POLL_SECONDS,
               message=f"pod {name} cleared from status.violations")
    return took
