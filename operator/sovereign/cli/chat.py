"""``sovereign chat``: ask a stack's model a question by its logical name, from any terminal.

Thin: loads the kubeconfig, calls ``services.chat.ask`` (which goes through the apiserver's
service proxy, so nothing but a kubeconfig is needed) and prints the answer, or one line saying
why there is none. Exit codes as every command (``sovereign.cli``): 0 answered; 1 the model is
unknown, not Ready or gave no answer; 2 usage; 3 no kubeconfig or the cluster cannot be reached.
"""

from __future__ import annotations

import json
import sys

import click

from sovereign.kube.client import Kube
from sovereign.kube.errors import KubeError
from sovereign.services.chat import ChatError, ask


@click.command("chat")
@click.argument("model")
@click.argument("message")
@click.option("-n", "--namespace", help="Namespace of the stack; default: the one stack in any "
              "namespace that declares MODEL.")
@click.option("--stack", help="Name of the stack (needs --namespace) when several declare MODEL.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), envvar="KUBECONFIG",
              help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Most tokens of the answer.")
@click.option("--timeout", type=click.FloatRange(1, 600), default=60, show_default=True,
              help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as one JSON object "
              "(namespace, stack, model, servedBy, answer, seconds) for scripts.")
def command(model: str, message: str, namespace: str | None, stack: str | None,
            kubeconfig: str | None, max_tokens: int, timeout: float, as_json: bool) -> None:
    """Send MESSAGE to the model a stack serves as MODEL (its logical name) and print the answer.

    The request goes through the Kubernetes API's service proxy
    (/api/v1/namespaces/NS/services/MODEL:8000/proxy/v1/chat/completions), so it works on any
    cluster your kubeconfig reaches.

    \b
    Examples:
      sovereign chat chat-cpu "Say hello"                 # the local cloud of `sovereign dev up`
      sovereign chat chat "Summarise the policy" -n gov-qa --json
    \b
    Exit codes: 0 answered; 1 the model is unknown, not Ready or did not answer; 2 bad options;
    3 no kubeconfig, or the cluster cannot be reached.
    """
    if stack and not namespace:
        raise click.UsageError("--stack needs its namespace: add -n NAMESPACE")
    try:
        kube = Kube.connect(kubeconfig=kubeconfig)
    except Exception as err:  # noqa: BLE001 - any failure to load a kubeconfig is the user's to fix
        click.echo(f"error: cannot load a kubeconfig ({err}). Set KUBECONFIG or pass --kubeconfig; "
                   "for the local cluster run `sovereign dev up` first.", err=True)
        sys.exit(3)
    try:
        answer = ask(kube, model=model, message=message, namespace=namespace, stack=stack,
                     max_tokens=max_tokens, timeout=timeout)
    except ChatError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KubeError as err:
        click.echo(f"error: cannot read the cluster: {err}", err=True)
        sys.exit(3)
    finally:
        kube.close()
    if as_json:
        click.echo(json.dumps({"namespace": answer.namespace, "stack": answer.stack, "model": answer.model,
                               "servedBy": answer.served_by, "answer": answer.text,
                               "seconds": round(answer.seconds, 3)}))
        return
    click.echo(answer.text)
    click.echo(f"-- {answer.model} ({answer.namespace}/{answer.stack}), served by {answer.served_by} "
               f"in {answer.seconds:.1f}s", err=True)
