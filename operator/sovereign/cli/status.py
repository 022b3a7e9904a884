"""``sovereign status``: stacks, models, node pools, GPU health and violations of any cluster.

Reads the current kubeconfig's cluster (or ``--kubeconfig``) through ``services.overview`` and
shows it once, or live with ``--watch``. Exit code 0 when every stack shown is Ready, 1 when one
is not (or none matched), 3 when the cluster cannot be reached.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from sovereign.cli import _view
from sovereign.kube.client import Kube
from sovereign.kube.errors import KubeError
from sovereign.services.overview import read_overview


@click.command("status")
@click.argument("stack", required=False)
@click.option("-n", "--namespace", help="Namespace of the stack(s); default: every namespace.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), envvar="KUBECONFIG",
              help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")
@click.option("-w", "--watch", is_flag=True, help="Keep refreshing until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
def command(stack: str | None, namespace: str | None, kubeconfig: str | None, watch: bool,
            interval: float) -> None:
    """Show SovereignStacks: conditions, models and replicas, node pools, GPU health, violations.

    \b
    Examples:
      sovereign status                         # every stack in the cluster
      sovereign status citizen-services -n gov-qa --watch
    \b
    Exit codes: 0 every stack shown is Ready; 1 a stack is not Ready or none matched;
    3 the cluster cannot be reached.
    """
    if stack and not namespace:
        raise click.UsageError("naming a stack needs its namespace: add -n NAMESPACE")
    console = Console()
    try:
        kube = Kube.connect(kubeconfig=kubeconfig)
    except Exception as err:  # noqa: BLE001 - any failure to load a kubeconfig is the user's to fix
        console.print(f"[red]cannot load a kubeconfig ({err}).[/] Set KUBECONFIG or pass --kubeconfig; "
                      "for the local cluster run `sovereign dev up` first.")
        sys.exit(3)
    try:
        if watch:
            try:
                _view.watch(lambda: read_overview(kube, namespace=namespace, name=stack),
                            console=console, interval=interval)
            except KeyboardInterrupt:
                return
        overview = read_overview(kube, namespace=namespace, name=stack)
    except KubeError as err:
        console.print(f"[red]cannot read the cluster: {err}[/]")
        sys.exit(3)
    finally:
        kube.close()
    console.print(_view.render(overview))
    sys.exit(0 if overview.stacks and all(s.ready for s in overview.stacks) else 1)
