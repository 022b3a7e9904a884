"""``sovereign crds``: print the SovereignStack CRD generated from the API models.

The committed ``crds/sovereign.ai_sovereignstacks.yaml`` is this command's output; a test fails
when the two differ. Auto-registered by ``sovereign.cli``.
"""

from __future__ import annotations

import click

from sovereign.api.crd import REGENERATE_HINT, crd_yaml


@click.command("crds")
def command() -> None:
    """Print the SovereignStack CustomResourceDefinition as YAML.

    \b
    Regenerate the committed CRD after changing the API models:
      REGENERATE_HINT
    Example, install it:
      sovereign crds | kubectl apply --server-side -f -
    \b
    Exit code: 0.
    """
    click.echo(crd_yaml(), nl=False)


command.help = (command.help or "").replace("REGENERATE_HINT", REGENERATE_HINT)
