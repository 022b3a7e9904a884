"""``sovereign run``: the operator. Kopf runs every handler of the operator in this process.

Installs, on one Kopf registry: the stack reconciler (``handlers.stack``), the residency indexes,
governed-namespace parameters, labels and audit (``handlers.residency``) and, unless
``--no-webhooks``, residency admission (``handlers.admission``: the apiserver's admission policies
and the lean lookup webhook server); serves the operator's metrics
(``sovereign.metrics``) on ``--metrics-port``. Connects with the pod's ServiceAccount, else
``$KUBECONFIG`` or ~/.kube/config; watches the namespaces given with ``--namespace`` (or all with
``-A``) until SIGINT/SIGTERM. The Helm chart's Deployment passes these options. Auto-registered
by ``sovereign.cli``.
"""

from __future__ import annotations

import logging
import sys

import click
import kopf
from kubernetes.config import ConfigException
from prometheus_client import start_http_server

from sovereign import metrics
from sovereign.handlers import admission, residency
from sovereign.handlers.stack import OperatorConfig, install
from sovereign.kube.client import Kube
from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE, DEFAULT_PROMETHEUS_URL


@click.command("run")
@click.option("-n", "--namespace", "namespaces", multiple=True, metavar="NS",
              help="Watch SovereignStacks in NS (repeat for more; glob patterns such as 'gov-*' work).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch SovereignStacks in every namespace.")
@click.option("--liveness", metavar="URL", default=None,
              help="Serve a liveness probe at URL, such as http://0.0.0.0:8080/healthz.")
@click.option("--standalone", is_flag=True, help="Run alone: no peering with other instances of the operator.")
@click.option("--peering", metavar="NAME", default=None,
              help="Kopf peering object that elects one active instance among replicas (POD_ID names this one).")
@click.option("--resync-seconds", type=click.FloatRange(min=1), default=60.0, show_default=True,
              envvar="SOVEREIGN_RESYNC_SECONDS",
              help="How often each stack is reconciled without any change seen (repairs deleted children).")
@click.option("--audit-seconds", type=click.FloatRange(min=1), default=residency.DEFAULT_AUDIT_SECONDS,
              show_default=True, help="How often each stack's residency is audited.")
@click.option("--operator-image", default=DEFAULT_OPERATOR_IMAGE, show_default=True, envvar="SOVEREIGN_OPERATOR_IMAGE",
              help="Image of this operator; model pods run `sovereign fetch-model` from it.")
@click.option("--prometheus-url", default=DEFAULT_PROMETHEUS_URL, show_default=True, envvar="SOVEREIGN_PROMETHEUS_URL",
              help="Prometheus that autoscaled models' ScaledObjects query.")
@click.option("--metrics-address", default="0.0.0.0", show_default=True, help="Address of the /metrics server.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the /metrics server; unset: no metrics server.")
@click.option("--webhooks/--no-webhooks", default=True, show_default=True,
              help="Apply the residency admission policies, serve the lookup webhooks and keep their "
                   "configuration pointed here.")
@click.option("--webhook-address", default=admission.AdmissionConfig.listen_address, show_default=True,
              help="Address the webhook server listens on.")
@click.option("--webhook-port", type=click.IntRange(1, 65535), default=admission.DEFAULT_PORT, show_default=True,
              help="Port the webhook server listens on.")
@click.option("--webhook-host", default=None, help="Name or address the apiserver calls the webhooks at.")
@click.option("--webhook-service", metavar="NS/NAME[:PORT]", default=None,
              help="The operator's Service, for webhook configurations inside the cluster.")
@click.option("--webhook-cert-file", type=click.Path(dir_okay=False), default=None,
              help="Mounted serving certificate (PEM); unset: a self-signed one at each start.")
@click.option("--webhook-key-file", type=click.Path(dir_okay=False), default=None,
              help="Key of --webhook-cert-file (PEM).")
@click.option("-v", "--verbose", is_flag=True, help="Log every step, not just what changed.")
def command(namespaces: tuple[str, ...], all_namespaces: bool, liveness: str | None, standalone: bool,
            peering: str | None, resync_seconds: float, audit_seconds: float, operator_image: str,
            prometheus_url: str, metrics_address: str, metrics_port: int | None, webhooks: bool,
            webhook_address: str, webhook_port: int, webhook_host: str | None, webhook_service: str | None,
            webhook_cert_file: str | None, webhook_key_file: str | None, verbose: bool) -> None:
    """Run the SovereignStack operator until interrupted.

    Exit codes: 2 for bad options, 3 when no cluster can be reached.

    \b
    Examples:
      sovereign run -n gov-qa --no-webhooks
      sovereign run -A --liveness http://0.0.0.0:8080/healthz --metrics-port 9402
    """
    if bool(namespaces) == all_namespaces:
        raise click.UsageError("give --namespace NS (repeatable) or --all-namespaces, not both and not neither")
    if standalone and peering:
        raise click.UsageError("--standalone and --peering exclude each other")
    if bool(webhook_cert_file) != bool(webhook_key_file):
        raise click.UsageError("--webhook-cert-file and --webhook-key-file go together")
    kopf.configure(verbose=verbose)
    # Verbose is the root logger at DEBUG; the S3 and HTTP libraries would drown the operator's lines.
    for library in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(library).setLevel(logging.WARNING)
    try:
        kube = Kube.connect()
    except ConfigException as err:
        click.echo(f"cannot connect to Kubernetes: {err}; set KUBECONFIG or run in a pod", err=True)
        sys.exit(3)
    registry = kopf.OperatorRegistry()
    install(registry, kube=kube, config=OperatorConfig(operator_image=operator_image, prometheus_url=prometheus_url,
                                                       resync_seconds=resync_seconds))
    residency.install(registry, kube=kube, config=residency.ResidencyConfig(audit_seconds=audit_seconds))
    if webhooks:
        admission.install(registry, kube=kube, config=admission.AdmissionConfig(
            listen_address=webhook_address, port=webhook_port, host=webhook_host, service=webhook_service,
            cert_file=webhook_cert_file, key_file=webhook_key_file))
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_address, registry=metrics.REGISTRY)
    try:
        kopf.run(registry=registry, standalone=True if standalone else None, peering_name=peering,
                 namespaces=list(namespaces), clusterwide=all_namespaces, liveness_endpoint=liveness)
    finally:
        kube.close()
