"""``sovereign validate -f FILE...``: check SovereignStack manifests offline, as the apiserver would.

For CI pipelines and GitOps pre-commit hooks: every SovereignStack document in the files
(multi-document YAML, ``-`` for standard input) is checked with ``api.validation``; documents
of other kinds are skipped, so a whole manifests folder can be passed. Prints one line per
error (file, document, field path, what is wrong, the bad value) and exits 1 when there is any
error, 0 otherwise. Auto-registered by ``sovereign.cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click
import yaml

from sovereign.api.validation import is_stack_document, load_documents, validate_document


@click.command("validate")
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.File("r"),
    help="A YAML file of one or more documents; '-' reads standard input. Repeat for more files.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print errors only, not the stacks that pass.")
def command(files: tuple[Any, ...], quiet: bool) -> None:
    """Check SovereignStack manifests against the API's rules, without a cluster.

    Exit code 0 when every SovereignStack is valid, 1 when any is not (or a file is not YAML).

    \b
    Examples:
      sovereign validate -f stack.yaml
      sovereign validate -f manifests/a.yaml -f manifests/b.yaml
      kustomize build overlays/prod | sovereign validate -f -
    """
    failed = False
    checked = 0
    for handle in files:
        name = handle.name
        try:
            documents = load_documents(handle.read())
        except yaml.YAMLError as error:
            click.echo(f"{name}: not valid YAML: {error}", err=True)
            failed = True
            continue
        for number, document in enumerate(documents, start=1):
            if not is_stack_document(document):
                continue
            checked += 1
            where = f"{name} (document {number}, {_identity(document)})"
            errors = validate_document(document)
            for error in errors:
                click.echo(f"{where}: {error}")
            if errors:
                failed = True
            elif not quiet:
                click.echo(f"{where}: valid")
    if checked == 0 and not failed:
        click.echo("no SovereignStack documents found", err=True)
    sys.exit(1 if failed else 0)


def _identity(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = metadata.get("name") or metadata.get("generateName") or "<no name>"
    namespace = metadata.get("namespace")
    return f"SovereignStack {namespace}/{name}" if namespace else f"SovereignStack {name}"
