"""``sovereign dev``: the local sovereign cloud, when the command runs from a checkout.

The local cloud (control plane built from Go, simulated GPU nodes, a real node, MinIO) is a
development harness, the package ``sovereign_dev`` beside this one in the repository; the
operator's distribution does not ship it. This module only hands the command over to it, or
says how to get it. Called by the ``sovereign`` command group (``make dev`` runs ``dev up``).
"""

from __future__ import annotations

import click

try:
    from sovereign_dev.cli import command
except ImportError as _missing:
    _reason = str(_missing)

    @click.command("dev", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        """A local sovereign cloud (needs a checkout of the repository: `make dev`)."""
        click.echo(
            "error: `sovereign dev` runs the local cloud of the repository's harness "
            f"(package sovereign_dev), which is not installed here ({_reason}).\n"
            "Clone the repository and run `make dev`; it installs the harness into its .venv.",
            err=True)
        raise SystemExit(3)
