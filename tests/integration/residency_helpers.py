"""Shared by the residency integration tests: the operator's residency handlers in this process.

``operator`` (module-scoped) runs Kopf in a thread with ``handlers.residency`` and
``handlers.admission`` on one registry: the residency admission policies are applied to the local
kube-apiserver (which then judges every pod, workload and Service of a governed namespace itself),
and the lookup webhooks are served over HTTPS on 127.0.0.1 with a self-signed certificate; the
audit runs every ``AUDIT_SECONDS`` and its metric can be read directly. At the end of the module,
the policies and the webhook configuration are removed from the shared cluster.
Import the fixtures into a test module (``from residency_helpers import operator, governed``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import kopf
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev.cluster import free_port, wait_until
from sovereign_dev.scenario import remove_residency_admission
from sovereign.handlers import admission, residency
from sovereign.kube.admission import CONFIGURATION_NAME
from sovereign.kube.client import Kube
from sovereign.render.names import GOVERNED_LABEL

AUDIT_SECONDS = 2
WAIT = 90  # seconds; generous, the machine is shared


@pytest.fixture(scope="module")
def operator(cluster, api_client) -> Iterator[None]:
    """The residency handlers, running until the module's tests are done."""
    kube = Kube(cluster.api_client())
    registry = kopf.OperatorRegistry()

    settings = api_client.configuration

    @kopf.on.login(registry=registry)
    def login(**_):
        return kopf.ConnectionInfo(server=settings.host, ca_path=settings.ssl_ca_cert,
                                   certificate_path=settings.cert_file, private_key_path=settings.key_file)

    residency.install(registry, kube=kube, config=residency.ResidencyConfig(audit_seconds=AUDIT_SECONDS))
    admission.install(registry, kube=kube, config=admission.AdmissionConfig(
        listen_address="127.0.0.1", port=free_port(), host="127.0.0.1"))
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(name="residency-operator", daemon=True, target=lambda: asyncio.run(kopf.operator(
        registry=registry, clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready)))
    thread.start()
    admission_api = client.AdmissionregistrationV1Api(api_client)
    try:
        assert ready.wait(WAIT), "the operator did not start"
        wait_until(lambda: admission_api.read_validating_webhook_configuration(CONFIGURATION_NAME),
                   timeout=WAIT, message="the residency webhook configuration")
        yield
    finally:
        stop.set()
        thread.join(WAIT)
        # In a real cluster the policies and the configuration stay (enforcing, and failing closed)
        # while the operator is away; the shared test cluster must not keep them.
        remove_residency_admission(api_client)
        kube.close()


def make_stack(api_client, namespace: str, *, name: str = "citizen", enforcement: str = "Enforce",
               spec: dict | None = None, **residency) -> dict:
    """Create a stack allowed only me-central-1 (QA); ``residency`` adds to its residency, ``spec``
    to the rest of its spec."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"residency": {"jurisdiction": "QA", "regions": ["me-central-1"], "enforcement": enforcement,
                                   **residency}, **(spec or {})}}
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                               body)


def read_stack(api_client, namespace: str, name: str = "citizen") -> dict:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def wait_governed(api_client, namespace: str) -> None:
    """Wait until the operator has labelled ``namespace`` governed and the apiserver applies the
    residency policies there (a new pod gets the region affinity: the parameters and the label
    have reached the policies' caches)."""
    core = client.CoreV1Api(api_client)
    wait_until(lambda: (core.read_namespace(namespace).metadata.labels or {}).get(GOVERNED_LABEL) == "true",
               timeout=WAIT, message=f"namespace {namespace} labelled {GOVERNED_LABEL}")
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
             "spec": {"containers": [{"name": "app", "image": "registry.gov.qa/app:1"}]}}
    wait_until(lambda: core.create_namespaced_pod(namespace, probe, dry_run="All").spec.affinity is not None,
               timeout=WAIT, interval=0.2, message=f"the residency policies applied in {namespace}")


@pytest.fixture
def governed(operator, api_client, namespace) -> str:
    """A namespace holding an enforcing stack, once the operator has labelled it governed."""
    make_stack(api_client, namespace)
    wait_governed(api_client, namespace)
    return namespace
