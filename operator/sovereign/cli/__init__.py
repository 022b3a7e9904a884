"""The ``sovereign`` command line.

Every module in this package that defines a module-level ``command`` (a ``click.Command``)
becomes the sub-command named after the module (``fetch_model`` -> ``fetch-model``), so a
capability adds its command by adding one file here. Called by the
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


class _LazyGroup(click.Group):
    """Finds sub-commands by module name and imports a module only when its command runs.

    So ``sovereign agent`` on a GPU node does not import Kopf or boto3, and a command whose
    dependencies are missing cannot break the others. Module ``fetch_model`` is ``fetch-model``.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = {info.name.replace("_", "-") for info in pkgutil.iter_modules(__path__)
                 if not info.name.startswith("_")}
        return sorted(names | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        module_name = cmd_name.replace("-", "_")
        if module_name.startswith("_") or module_name not in {
                info.name for info in pkgutil.iter_modules(__path__)}:
            return None
        module = importlib.import_module(f"{__name__}.{module_name}")
        command = getattr(module, "command", None)
        return command if isinstance(command, click.Command) else None


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sovereign")
def main() -> None:
    """Run and inspect sovereign AI stacks on Kubernetes.

    \b
    Examples:
      sovereign dev up                      # a local sovereign cluster with a sample stack
      sovereign chat chat-cpu "Say hello"   # ask a stack's model, by its logical name
      sovereign validate -f stack.yaml      # check a SovereignStack offline
      sovereign render -f stack.yaml        # the exact manifests the operator would apply
    """
