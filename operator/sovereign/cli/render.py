"""``sovereign render -f stack.yaml [--facts nodes.yaml]``: print what the operator would apply.

For GitOps previews and reviews: the manifests come from ``services.reconcile.desired_objects``,
the function the operator itself applies from, as multi-document YAML in the operator's order,
byte-identical for the same input. ``--facts`` takes Node manifests (``kubectl get nodes -o
yaml``), which decide the nodes of Existing pools; without it no node is chosen.
``--no-pod-monitors`` leaves out the models' PodMonitors, as the operator does in a cluster
without the Prometheus Operator's CRDs. The namespace
is the stack's own, else ``--namespace``; ownerReferences need the stack's uid, so they appear
only for a stack read back from the cluster (``kubectl get sstack NAME -o yaml``).
Auto-registered by ``sovereign.cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import click
import yaml

from sovereign.api import InvalidStackError, parse_stack
from sovereign.api.validation import is_stack_document, load_documents
from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE, DEFAULT_PROMETHEUS_URL
from sovereign.render.stack import RenderError
from sovereign.services.facts import facts_from_nodes
from sovereign.services.reconcile import desired_objects


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases: a shared value is written out in each place it occurs."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_manifests(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the builders' order, so equal objects give equal text."""
    return "".join(
        "---\n" + yaml.dump(obj, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False,
                             allow_unicode=True, width=1000)
        for obj in objects
    )


@click.command("render")
@click.option("-f", "--filename", "stack_file", required=True, type=click.File("r"),
              help="YAML with the SovereignStack ('-' reads standard input).")
@click.option("--facts", "facts_file", type=click.File("r"), default=None,
              help="Node manifests (kubectl get nodes -o yaml) that Existing pools choose from.")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Namespace for a stack that names none.")
@click.option("--operator-image", default=DEFAULT_OPERATOR_IMAGE, show_default=True, envvar="SOVEREIGN_OPERATOR_IMAGE",
              help="Image the model loader init containers run.")
@click.option("--prometheus-url", default=DEFAULT_PROMETHEUS_URL, show_default=True, envvar="SOVEREIGN_PROMETHEUS_URL",
              help="Prometheus that autoscaled models' ScaledObjects query.")
@click.option("--pod-monitors/--no-pod-monitors", default=True, show_default=True,
              help="Whether the cluster serves the Prometheus Operator's PodMonitor: the operator renders one "
                   "per model only then (it checks the cluster; say --no-pod-monitors for one without it).")
def command(stack_file: Any, facts_file: Any, namespace: str, operator_image: str, prometheus_url: str,
            pod_monitors: bool) -> None:
    """Print the manifests the operator would apply for a SovereignStack.

    Exit code 0 on success, 1 when the stack is not valid or cannot be rendered.

    \b
    Examples:
      sovereign render -f stack.yaml
      kubectl get nodes -o yaml > nodes.yaml && sovereign render -f stack.yaml --facts nodes.yaml
    """
    try:
        stacks = [doc for doc in load_documents(stack_file.read()) if is_stack_document(doc)]
        nodes = _nodes(load_documents(facts_file.read())) if facts_file else []
    except yaml.YAMLError as err:
        raise click.ClickException(f"not valid YAML: {err}") from None
    if len(stacks) != 1:
        raise click.ClickException(f"{stack_file.name}: expected one SovereignStack, found {len(stacks)}")
    document = stacks[0]
    metadata = document.setdefault("metadata", {})
    metadata.setdefault("namespace", namespace)
    try:
        stack = parse_stack(document)
        facts = facts_from_nodes(nodes, operator_image=operator_image, prometheus_url=prometheus_url)
        objects = desired_objects(stack, replace(facts, pod_monitors=pod_monitors))
    except (InvalidStackError, RenderError) as err:
        click.echo(str(err), err=True)
        sys.exit(1)
    click.echo(dump_manifests(objects), nl=False)


def _nodes(documents: list[Any]) -> list[Mapping[str, Any]]:
    """Node manifests from documents that are Nodes or Lists of them."""
    nodes: list[Mapping[str, Any]] = []
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        items = document.get("items") if document.get("kind", "").endswith("List") else [document]
        nodes += [item for item in items or [] if isinstance(item, Mapping) and item.get("kind", "Node") == "Node"]
    return nodes
