"""``sovereign run``: the operator. Kopf runs the handlers of ``handlers.stack`` in this process.

Connects with the pod's ServiceAccount, else ``$KUBECONFIG`` or ~/.kube/config; watches the
namespaces given with ``--namespace`` (or all with ``-A``) until SIGINT/SIGTERM. Auto-registered
by ``sovereign.cli``.
"""

from __future__ import annotations

import sys

import click
import kopf
from kubernetes.config import ConfigException

from sovereign.handlers.stack import OperatorConfig, install
from sovereign.kube.client import Kube
from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE, DEFAULT_PROMETHEUS_URL


@click.command("run")
@click.option("-n", "--namespace", "namespaces", multiple=True, metavar="NS",
              help="Watch SovereignStacks in NS (repeat for more; glob patterns such as 'gov-*' work).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch SovereignStacks in every namespace.")
@click.option("--liveness", metavar="URL", default=None,
              help="Serve a liveness probe at URL, such as http://0.0.0.0:8080/healthz.")
@click.option("--standalone", is_flag=True, help="Do not coordinate with other operator instances (no peering).")
@click.option("--resync-seconds", type=click.FloatRange(min=1), default=60.0, show_default=True,
              envvar="SOVEREIGN_RESYNC_SECONDS",
              help="How often each stack is reconciled without any change seen (repairs deleted children).")
@click.option("--operator-image", default=DEFAULT_OPERATOR_IMAGE, show_default=True, envvar="SOVEREIGN_OPERATOR_IMAGE",
              help="Image of this operator; model pods run `sovereign fetch-model` from it.")
@click.option("--prometheus-url", default=DEFAULT_PROMETHEUS_URL, show_default=True, envvar="SOVEREIGN_PROMETHEUS_URL",
              help="Prometheus that autoscaled models' ScaledObjects query.")
@click.option("-v", "--verbose", is_flag=True, help="Log every step, not just what changed.")
def command(namespaces: tuple[str, ...], all_namespaces: bool, liveness: str | None, standalone: bool,
            resync_seconds: float, operator_image: str, prometheus_url: str, verbose: bool) -> None:
    """Run the SovereignStack operator until interrupted.

    \b
    Examples:
      sovereign run -n gov-qa
      sovereign run -A --liveness http://0.0.0.0:8080/healthz
    """
    if bool(namespaces) == all_namespaces:
        raise click.UsageError("give --namespace NS (repeatable) or --all-namespaces, not both and not neither")
    kopf.configure(verbose=verbose)
    try:
        kube = Kube.connect()
    except ConfigException as err:
        click.echo(f"cannot connect to Kubernetes: {err}; set KUBECONFIG or run in a pod", err=True)
        sys.exit(3)
    registry = kopf.OperatorRegistry()
    install(registry, kube=kube,
            config=OperatorConfig(operator_image=operator_image, prometheus_url=prometheus_url,
                                  resync_seconds=resync_seconds))
    try:
        kopf.run(registry=registry, standalone=standalone, namespaces=list(namespaces),
                 clusterwide=all_namespaces, liveness_endpoint=liveness)
    finally:
        kube.close()
