"""``sovereign report STACK [-n NS] [-o FILE] [--format html|json]``: residency evidence for an auditor.

Reads the live cluster (``services.residency_report.gather_evidence``): the stack's promise
(jurisdiction, regions, enforcement, declared routes), every governed pod, volume, Service and
data store with where it is and the result of each residency check, the violations the audit
recorded with their timestamps, the conditions and the admission configuration in force; and
writes it as one self-contained HTML page or as JSON (``report``). S3 buckets are checked from
where the command runs, read only; ``--no-store-checks`` leaves them out. Auto-registered by
``sovereign.cli``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from kubernetes.config import ConfigException

from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.report import FORMATS, render
from sovereign.services.residency_report import StackNotFound, gather_evidence


@click.command("report")
@click.argument("stack")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of the stack.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write the report to this file instead of standard output.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="html or json. Default: from the --output suffix (.json is json), else html.")
@click.option("--kubeconfig", default=None, envvar="KUBECONFIG", help="Kubeconfig to use (default: $KUBECONFIG).")
@click.option("--no-store-checks", is_flag=True, help="Do not contact the stack's S3 stores.")
def command(stack: str, namespace: str, output: Path | None, fmt: str | None, kubeconfig: str | None,
            no_store_checks: bool) -> None:
    """Write the data residency report of a SovereignStack.

    Exit code 0 when written, 1 when the stack does not exist, 3 when the cluster cannot be reached.

    \b
    Examples:
      sovereign report citizen-services -n gov-qa -o residency.html
      sovereign report citizen-services -n gov-qa --format json > residency.json
    """
    fmt = fmt or ("json" if output is not None and output.suffix == ".json" else "html")
    try:
        kube = Kube.connect(kubeconfig=kubeconfig)
    except ConfigException as err:
        click.echo(f"cannot connect to Kubernetes: {err}; set KUBECONFIG or pass --kubeconfig", err=True)
        sys.exit(3)
    try:
        evidence = gather_evidence(kube=kube, namespace=namespace, name=stack, check_stores=not no_store_checks)
    except StackNotFound as err:
        click.echo(f"{err}: check the name and -n/--namespace (kubectl get sstack -A)", err=True)
        sys.exit(1)
    except (errors.Unavailable, errors.Forbidden) as err:
        click.echo(f"cannot read the cluster: {err}", err=True)
        sys.exit(3)
    finally:
        kube.close()
    text = render(evidence, fmt=fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    verdict = "compliant" if evidence.compliant else f"{len(evidence.violations)} violation(s)"
    click.echo(f"wrote {output} ({fmt}): {namespace}/{stack} is {verdict}", err=True)
