"""Residency benchmarks: admission latency under load, and violation-to-status time.

Against a local control plane, with the operator as a real ``sovereign run`` subprocess serving
its webhooks on loopback (self-signed certificate) and its metrics on a loopback port:

- admission latency at ``RATES`` requests per second: server-side dry-run Pod creates
  (``dryRun=All`` still calls every admission webhook) into a namespace governed by an
  enforcing stack, each passing the mutating ``pod-region-affinity`` and the validating
  ``pod-residency`` webhook; next to the same creates into an ungoverned namespace, where no
  webhook is called (the apiserver's own cost). An open loop: request ``i`` is due at
  ``start + i / rate`` and is sent by whichever of ``THREADS`` threads is free, so a slow answer
  does not slow the rate down while threads remain (the achieved rate says when none did).
  ``ROUNDS`` rounds of ``ROUND_SECONDS`` per rate and namespace; each round gives the
  client-side p50/p99 (send to answer: apiserver, both webhooks and the dry-run admission
  chain), and, from the round's increase of the operator's ``sovereign_webhook_duration_seconds``
  (the handler's own time, without Kopf's HTTPS server around it), each webhook's p50/p99 as the
  upper bound of the histogram bucket they fall in and its exact mean (sum / count); the CPU
  share of the operator, etcd, the kube-apiserver and this load generator, and the operator's
  CPU per admission review;
- violation -> status: in a namespace whose stack is in Audit mode (audit period
  ``AUDIT_SECONDS``), a pod pinned to eu-west-1 is admitted with a warning; the clock runs
  from the create call's answer to the stack's ``status.violations`` listing the pod (polled
  every ``POLL_SECONDS``). The ``VIOLATIONS`` creates are spread over the audit timer's phase:
  the median is the typical delay, the max the worst (one period plus one audit pass).

Every loop is bounded in count and in time. The machine is shared (load generator, apiserver,
etcd and operator on the same cores), so the figures are an upper bound for a real cluster.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families
from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev import build
from sovereign_dev.cluster import DevCluster, free_port, wait_until
from sovereign_dev.scenario import OperatorProcess, WebhookOperator
from sovereign.kube.admission import CONFIGURATION_NAME, GOVERNED_LABEL
from sovereign.services.admission import POD_AFFINITY, POD_RESIDENCY

from bench.result import Result

RATES = (50, 200)
ROUNDS = 3
ROUND_SECONDS = 8.0
WARMUP_REQUESTS = 50
THREADS = 32
AUDIT_SECONDS = 2.0
VIOLATIONS = 5
POLL_SECONDS = 0.05
WAIT = 120.0  # seconds; generous bound on every wait, the machine is shared
REGION = "topology.kubernetes.io/region"
ENFORCED, AUDITED, FREE = "bench-enforce", "bench-audit", "bench-free"
HISTOGRAM = "sovereign_webhook_duration_seconds"
OPERATOR = "the operator"


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
                         "kube-apiserver": cluster.components["kube-apiserver"].process.pid,
                         "the load generator": os.getpid()}
            for rate in RATES:
                results += _admission_latency(load, functools.partial(_scrape, metrics_port), rate=rate,
                                              processes=processes)
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
    """A namespace holding one stack allowed only me-central-1, once the operator governs it."""
    core = client.CoreV1Api(api)
    _namespace(api, name)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, name, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack", "metadata": {"name": "citizen"},
        "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"], "enforcement": enforcement}}})
    _wait_alive(operator, lambda: (core.read_namespace(name).metadata.labels or {}).get(GOVERNED_LABEL) == "true",
                f"namespace {name} labelled {GOVERNED_LABEL}")


def _namespace(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: core.read_namespaced_service_account("default", name), timeout=WAIT,
               message=f"the default ServiceAccount of {name}")


def _wait_for_webhooks(api: client.ApiClient, operator: OperatorProcess) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    _wait_alive(operator, lambda: admission.read_mutating_webhook_configuration(CONFIGURATION_NAME)
                and admission.read_validating_webhook_configuration(CONFIGURATION_NAME),
                "the residency webhook configurations")


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
    """Dry-run Pod creates into the enforced namespace at a fixed rate from a bounded thread pool."""

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

    def drive(self, *, namespace: str, rate: float, count: int) -> tuple[list[float], float]:
        """Send ``count`` requests at ``rate`` per second; their latencies (s) and the rate the
        sends achieved. The answer must carry the region affinity exactly when ``namespace`` is
        the governed one (the mutating webhook ran, or was not called).

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
        pinned = namespace == ENFORCED

        def worker() -> None:
            while True:
                with lock:
                    index = next(issued, None)
                if index is None or failures or time.monotonic() > deadline:
                    return
                time.sleep(max(0.0, began + index / rate - time.monotonic()))
                sent = time.monotonic()
                try:
                    body = self.core.create_namespaced_pod(namespace, self.pod, dry_run="All",
                                                           _preload_content=False).data
                    failure = None if (b'"affinity"' in body) == pinned else (
                        f"the region affinity {'missing' if pinned else 'present'} in {namespace}: {body[:300]!r}")
                except client.ApiException as err:
                    failure = f"HTTP {err.status}: {str(err.body)[:300]}"
                took = time.monotonic() - sent
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


def _admission_latency(load: _LoadClient, scrape: Callable[[], dict[str, _Histogram]], *, rate: int,
                       processes: dict[str, int]) -> list[Result]:
    """``ROUNDS`` rounds at ``rate``, each one into the ungoverned namespace (no webhook called:
    the baseline) and then into the governed one."""
    count = int(rate * ROUND_SECONDS)
    prefix = f"dry-run Pod create at {rate} rps"
    governed = _ClientFigures(f"{prefix}, governed (apiserver + both webhooks)", count)
    baseline = _ClientFigures(f"{prefix}, ungoverned baseline (no webhook)", count)
    hooks = {hook.id: (Result(f"{prefix}: {kind} {hook.id} p50 (upper bound of its histogram bucket)", "ms"),
                       Result(f"{prefix}: {kind} {hook.id} p99 (upper bound of its histogram bucket)", "ms"),
                       Result(f"{prefix}: {kind} {hook.id} mean (histogram sum / count)", "ms"))
             for hook, kind in ((POD_AFFINITY, "mutating"), (POD_RESIDENCY, "validating"))}
    cpu = {name: Result(f"{prefix}, governed: CPU of {name} (% of one core)", "%") for name in processes}
    per_review = Result(f"{prefix}, governed: CPU of the operator per admission review", "ms")
    for _ in range(ROUNDS):
        baseline.add(*load.drive(namespace=FREE, rate=rate, count=count))
        before, used_before = scrape(), {name: _cpu_seconds(pid) for name, pid in processes.items()}
        began = time.monotonic()
        governed.add(*load.drive(namespace=ENFORCED, rate=rate, count=count))
        elapsed = time.monotonic() - began
        after = scrape()
        used = {name: _cpu_seconds(pid) - used_before[name] for name, pid in processes.items()}
        for name in processes:
            cpu[name].samples.append(round(100 * used[name] / elapsed, 1))
        reviews = sum(after[hook].count - before[hook].count for hook in hooks)
        per_review.samples.append(round(1000 * used[OPERATOR] / reviews, 2))
        for hook, (p50, p99, mean) in hooks.items():
            served = after[hook].since(before.get(hook))
            p50.samples.append(_ms(served.bucket_bound(0.50)))
            p99.samples.append(_ms(served.bucket_bound(0.99)))
            mean.samples.append(round(1000 * served.total / served.count, 3))
    return [*governed.results, *baseline.results, *(r for trio in hooks.values() for r in trio), *cpu.values(), per_review]


class _ClientFigures:
    """Client-side p50, p99 and achieved rate of a series of rounds."""

    def __init__(self, prefix: str, count: int) -> None:
        self.p50 = Result(f"{prefix}: client p50", "ms")
        self.p99 = Result(f"{prefix}: client p99", "ms")
        self.achieved = Result(f"{prefix}: achieved rate ({count} requests per round)", "rps")

    def add(self, latencies: list[float], reached: float) -> None:
        self.p50.samples.append(_ms(_percentile(latencies, 0.50)))
        self.p99.samples.append(_ms(_percentile(latencies, 0.99)))
        self.achieved.samples.append(round(reached, 1))

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


@dataclass(frozen=True)
class _Histogram:
    """One webhook's series of ``sovereign_webhook_duration_seconds``: cumulative ``(le, count)``
    buckets in order, and the sum of the observed seconds."""

    buckets: tuple[tuple[float, float], ...]
    total: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1]

    def since(self, earlier: _Histogram | None) -> _Histogram:
        """What was observed after ``earlier`` (a scrape of the same series)."""
        if earlier is None:
            return self
        counts = dict(earlier.buckets)
        return _Histogram(tuple((le, count - counts.get(le, 0.0)) for le, count in self.buckets),
                          self.total - earlier.total)

    def bucket_bound(self, q: float) -> float:
        """The upper bound of the bucket the ``q`` quantile falls in: all a histogram knows for
        sure (``histogram_quantile``'s interpolation within it is a guess); inf past the last."""
        rank = q * self.count
        return next(le for le, count in self.buckets if count >= rank)


def _scrape(port: int) -> dict[str, _Histogram]:
    """The operator's ``sovereign_webhook_duration_seconds``, by webhook."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            hook = sample.labels["webhook"]
            if sample.name == f"{HISTOGRAM}_bucket":
                buckets.setdefault(hook, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{HISTOGRAM}_sum":
                totals[hook] = sample.value
    return {hook: _Histogram(tuple(sorted(entries)), totals[hook]) for hook, entries in buckets.items()}


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
