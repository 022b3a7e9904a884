"""The operator as the chart runs it: reconciling stacks with residency admission in force (its
policies in the apiserver, its lookup webhooks served from the same process), against the real
local control plane.

Every child the operator applies in a governed namespace passes residency admission (pods and
workloads, claims, Services). A pass must never wait on a webhook that waits on the pass: the
full sample, whose application opens a port (a Service the services policy judges) and whose
models claim volumes (the claim webhook), becomes Ready with every child in place.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client
from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev.cluster import free_port, wait_until
from sovereign_dev.scenario import STACK, SimulatedCloud, WebhookOperator, delete_stack, is_ready, stack_conditions
from sovereign.kube.admission import CONFIGURATION_NAME

WAIT = 240  # seconds; generous, the machine is shared


def test_a_webhook_serving_operator_brings_the_full_sample_up_with_the_applications_service(
        cluster, api_client, namespace: str, minio_servers, tmp_path: Path):
    core = client.CoreV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    with SimulatedCloud(api_client, namespace, store=minio_servers["me-central-1"]) as cloud:
        operator = WebhookOperator(kubeconfig=cluster.kubeconfig, namespaces=[namespace], log=tmp_path / "operator.log",
                                   audit_seconds=3, metrics_port=free_port()).start()
        try:
            wait_until(lambda: admission.read_validating_webhook_configuration(CONFIGURATION_NAME),
                       timeout=WAIT, message="the operator's webhook configurations")
            client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, cloud.sample())

            def ready() -> bool:
                assert operator.running(), f"the operator exited:\n{operator.tail()}"
                return is_ready(api_client, namespace)

            try:
                wait_until(ready, timeout=WAIT, message="the full sample Ready")
            except TimeoutError as err:
                raise AssertionError(f"{err}\nconditions: {stack_conditions(api_client, namespace, STACK)}\n"
                                     f"operator log:\n{operator.tail(80)}") from err
            service = core.read_namespaced_service("assistant", namespace)
            assert [p.port for p in service.spec.ports] == [8080]
        finally:
            try:
                delete_stack(api_client, namespace, STACK)
            finally:
                operator.stop()
                # They fail closed and would outlive the operator in this shared cluster.
                WebhookOperator.remove_webhooks(api_client)
