"""The ``sovereign`` command line.

Every module in this package that defines a module-level ``command`` (a ``click.Command``)
becomes a sub-command, so a capability adds its command by adding one file here. Called by the
console script ``sovereign`` and by ``python -m sovereign``.

Exit codes shared by every command: 0 success, 1 the input or the cluster state is not
acceptable (validation errors, a stack not Ready), 2 usage errors (click's own), 3 an
environment problem the user must fix (missing toolchain, unreachable cluster).
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from sovereign import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sovereign")
def main() -> None:
    """Run and inspect sovereign AI stacks on Kubernetes.

    \b
    Examples:
      sovereign dev up                      # a local sovereign cluster with a sample stack
      sovereign validate -f stack.yaml      # check a SovereignStack offline
    """


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            main.add_command(command)


_register_commands()
