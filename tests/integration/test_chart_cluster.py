"""The chart and the kustomize manifests as the local apiserver sees them: a server-side dry run.

Every object goes through the apiserver's validation, defaulting and admission, against the
real schemas of the upstream CRDs the test cluster has installed (the Prometheus Operator's
ServiceMonitor, PodMonitor and PrometheusRule) and of the project's CRDs, without being stored.
The Kopf peering CRDs of the chart are installed for real first, since their objects cannot be
dry-run in the same request as their definitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from sovereign_dev import chart
from sovereign_dev.cluster import wait_until

WAIT = 90  # seconds; generous, the machine is shared
#: Values that exercise every template the chart has (cert-manager's excepted: no CRDs here).
EVERYTHING = {**chart.MONITORING, "agent": {"nvml": {"mode": "hostPath"}},
              "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
                  "kubernetes.io/metadata.name": "monitoring"}}}]}}


@pytest.fixture(scope="module")
def peering_crds(cluster, api_client) -> None:
    crds = chart.objects((chart.CHART / "crds" / "kopf.dev_peerings.yaml").read_text())
    _kubectl(cluster, "apply", "--server-side", "--field-manager=chart-test", documents=crds)
    extensions = client.ApiextensionsV1Api(api_client)

    def established(name: str) -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for crd in crds:
        wait_until(lambda n=crd["metadata"]["name"]: established(n), timeout=WAIT,
                   message=f"CRD {crd['metadata']['name']} Established")


@pytest.fixture(scope="module")
def kustomize_namespace(api_client) -> Iterator[str]:
    """The namespace the kustomize base installs into, so its namespaced objects can be dry-run."""
    core = client.CoreV1Api(api_client)
    created = chart.NAMESPACE not in {ns.metadata.name for ns in core.list_namespace().items}
    if created:
        core.create_namespace({"metadata": {"name": chart.NAMESPACE}})
    yield chart.NAMESPACE
    if created:
        core.delete_namespace(chart.NAMESPACE)


@pytest.mark.parametrize("values", [EVERYTHING, {"operator": {"watchNamespaces": ["default", "kube-public"]}}],
                         ids=["monitoring-and-hostpath", "watched-namespaces"])
def test_the_rendered_chart_is_accepted_by_the_apiserver(cluster, namespace, peering_crds, values):
    documents = chart.objects(chart.render(values=values, namespace=namespace, include_crds=True))
    kinds = {doc["kind"] for doc in documents}
    if values is EVERYTHING:
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "DaemonSet", "Deployment",
                "ClusterKopfPeering", "ValidatingAdmissionPolicy", "CustomResourceDefinition"} <= kinds

    accepted = _dry_run(cluster, documents)

    assert accepted == sorted(_ref(doc) for doc in documents)


@pytest.mark.parametrize("overlay", ["base", "overlays/monitoring", "overlays/production"])
def test_the_kustomize_manifests_are_accepted_by_the_apiserver(cluster, peering_crds, kustomize_namespace,
                                                               overlay):
    built = cluster.kubectl("kustomize", str(chart.MANIFESTS / overlay))
    assert built.returncode == 0, built.stderr
    documents = chart.objects(built.stdout)

    accepted = _dry_run(cluster, documents)

    assert accepted == sorted(_ref(doc) for doc in documents)
    if overlay != "base":
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {doc["kind"] for doc in documents}


def _dry_run(cluster, documents: list[dict[str, Any]]) -> list[str]:
    """Server-side dry-run apply; the objects the apiserver accepted, as kind/namespace/name."""
    result = _kubectl(cluster, "apply", "--server-side", "--dry-run=server", "--force-conflicts",
                      "--field-manager=chart-test", "-o", "yaml", documents=documents)
    answer = yaml.safe_load(result)
    items = answer["items"] if answer.get("kind") == "List" else [answer]
    return sorted(_ref(item) for item in items)


def _ref(doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    return f"{doc['kind']}/{meta.get('namespace', '')}/{meta['name']}"


def _kubectl(cluster, *args: str, documents: list[dict[str, Any]]) -> str:
    result = cluster.kubectl(*args, "-f", "-", input=yaml.safe_dump_all(documents))
    assert result.returncode == 0, f"kubectl {' '.join(args)} refused:\n{result.stderr}"
    return result.stdout
