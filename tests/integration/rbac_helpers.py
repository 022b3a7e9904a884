"""Run code as the chart's ServiceAccounts instead of as cluster admin.

``install_chart_access`` renders the Helm chart (``sovereign_dev.chart.render``) for a release in a
namespace and applies exactly its access objects: the ServiceAccounts, ClusterRoles, Roles,
their bindings and the agent's ValidatingAdmissionPolicy. ``ChartAccess`` then hands out
credentials of those ServiceAccounts, as a pod of the chart would have them:

- ``operator_token()`` / ``agent_token(pod_on=node)``: a TokenRequest token; the agent's is bound
  to a pod on the node, which gives it the node-name claim its admission policy checks;
- ``api_client(token)``: a kubernetes ApiClient with that token;
- ``kubeconfig(token, path)``: a kubeconfig file with it, for a process (``sovereign run`` reads
  ``$KUBECONFIG``; so do Kopf's login, kubectl and the kubernetes client).

A token is the real thing: RBAC, the admission policy and the audit log see the
ServiceAccount exactly as in a cluster, which impersonation would only approximate (it drops the
token's node claim). ``remove()`` deletes what ``install_chart_access`` created.

Used by ``test_chart_rbac.py`` and the reconciler's integration tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from sovereign_dev import chart
from sovereign_dev import fleet
from sovereign_dev.cluster import DevCluster, wait_until

#: The kinds that make up a ServiceAccount's access in the chart.
ACCESS_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
TOKEN_SECONDS = 3600
WAIT = 90  # seconds; generous, the machine is shared


@dataclass
class ChartAccess:
    """The chart's access objects as applied for one release, and credentials of its accounts."""

    cluster: DevCluster
    api: client.ApiClient
    namespace: str
    objects: list[dict[str, Any]]

    def account(self, component: str) -> str:
        """Name of the ServiceAccount of ``component`` (operator or gpu-agent)."""
        return next(o["metadata"]["name"] for o in self.objects if o["kind"] == "ServiceAccount"
                    and o["metadata"]["labels"]["app.kubernetes.io/component"] == component)

    def username(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account(component)}"

    def operator_token(self) -> str:
        return self._token(self.account("operator"), bound_to=None)

    def agent_token(self, *, pod_on: str) -> str:
        """A token of the agent's account bound to a new pod on node ``pod_on``, as the
        DaemonSet's pod there has it (with the node-name claim)."""
        account = self.account("gpu-agent")
        pod = client.CoreV1Api(self.api).create_namespaced_pod(self.namespace, {
            "metadata": {"name": f"gpu-agent-{uuid.uuid4().hex[:6]}"},
            "spec": {"nodeName": pod_on, "serviceAccountName": account,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "agent", "image": "sovereign:test"}]}})
        return self._token(account, bound_to=pod)

    def api_client(self, token: str) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.cluster.server
        configuration.ssl_ca_cert = self.api.configuration.ssl_ca_cert
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig for the cluster with ``token`` as its user."""
        admin = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "chart-account",
            "clusters": [{"name": "chart-account", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": "chart-account", "user": {"token": token}}],
            "contexts": [{"name": "chart-account", "context": {
                "cluster": "chart-account", "user": "chart-account", "namespace": self.namespace}}],
        }))
        path.chmod(0o600)
        return path

    def remove(self) -> None:
        _kubectl(self.cluster, "delete", "--ignore-not-found", "--wait=false", objects=self.objects)

    def _token(self, account: str, *, bound_to: client.V1Pod | None) -> str:
        spec: dict[str, Any] = {"expirationSeconds": TOKEN_SECONDS}
        if bound_to is not None:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod",
                                      "name": bound_to.metadata.name, "uid": bound_to.metadata.uid}
        return client.CoreV1Api(self.api).create_namespaced_service_account_token(
            account, self.namespace, {"spec": spec}).status.token


def install_chart_access(cluster: DevCluster, api: client.ApiClient, *, namespace: str,
                         values: Mapping[str, Any] | None = None,
                         release: str | None = None) -> ChartAccess:
    """Apply the chart's access objects for a release (a fresh name by default) in ``namespace``."""
    release = release or f"t{uuid.uuid4().hex[:6]}"
    rendered = chart.objects(chart.render(values=values, release=release, namespace=namespace))
    # The residency admission policies are not access objects: in force, they would judge every
    # governed namespace of the shared test cluster.
    objects = [o for o in rendered if o["kind"] in ACCESS_KINDS
               and not o["metadata"]["name"].startswith("sovereign-residency")]
    _kubectl(cluster, "apply", "--server-side", "--field-manager=chart-test", objects=objects)
    core = client.CoreV1Api(api)
    for account in (o for o in objects if o["kind"] == "ServiceAccount"):
        wait_until(lambda a=account: core.read_namespaced_service_account(
            a["metadata"]["name"], namespace), timeout=WAIT, message=f"ServiceAccount {account}")
    return ChartAccess(cluster=cluster, api=api, namespace=namespace, objects=objects)


def make_gpu_node(api: client.ApiClient) -> str:
    """A fresh simulated GPU node shaped like the fleet's first GPU group; the caller deletes it."""
    config = fleet.load()
    group = next(g for g in config["groups"] if "gpu" in g)
    prefix = f"gpu-chart-{uuid.uuid4().hex[:6]}"
    (node,) = fleet.nodes({**config, "groups": [{**group, "prefix": prefix, "count": 1}]})
    client.CoreV1Api(api).create_node(node)
    return node["metadata"]["name"]


def _kubectl(cluster: DevCluster, *args: str, objects: list[dict[str, Any]]) -> None:
    result = cluster.kubectl(*args, "-f", "-", input=yaml.safe_dump_all(objects))
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}{result.stdout}")
