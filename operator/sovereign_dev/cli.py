"""``sovereign dev``: a local sovereign cloud in one command (up, down, fault).

``up`` builds or reuses the control-plane binaries, starts ``devenv.DevEnvironment`` (control
plane with simulated GPU nodes in two regions, a real node in the first where containers run,
MinIO per region, the operator, a node agent per GPU node on fake NVML), applies the sample stack and shows the live view until Ctrl-C, SIGTERM or
a process of it dies, then tears everything down: one teardown, whatever ended the run, and one
paragraph naming the failed component and its log instead of a traceback (exit 3). ``down`` stops it from another terminal; ``fault`` scripts a GPU
fault into a simulated node's fake NVML so the whole health loop can be watched.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from sovereign.cli import _view
from sovereign_dev import build
from sovereign_dev import fleet as fleet_mod
from sovereign_dev.devenv import (
    CPU_MODEL, SAMPLE_NAMESPACE, SAMPLE_STACK, DevEnvError, DevEnvironment, default_workdir, read_state,
    stop_running)
from sovereign_dev import nvml_fake as fake_nvml

if TYPE_CHECKING:
    from sovereign.services.overview import Overview

_WORKDIR = click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=default_workdir,
    show_default="~/.local/state/sovereign/dev",
    help="Where the cluster, MinIO data, logs and dev.json live.")


def _regions(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """``--regions``: a comma-separated list of regions that ``fleet.yaml`` simulates."""
    if value is None:
        return None
    known = list(dict.fromkeys(group["region"] for group in fleet_mod.load()["groups"]))
    regions = [region.strip() for region in value.split(",") if region.strip()]
    unknown = [region for region in regions if region not in known]
    if unknown or not regions:
        raise click.BadParameter(
            f"{', '.join(unknown) or 'no region'}: the simulated fleet has regions "
            f"{', '.join(known)}; give one or more of them, in-country first", param_hint="--regions")
    return regions


@click.group("dev")
def command() -> None:
    """A local sovereign cluster: real control plane, a real node, simulated GPU nodes, MinIO, the operator.

    \b
    Examples:
      sovereign dev up                    # everything, plus a sample stack, with a live view
      sovereign chat chat-cpu "Say hello" # the sample's CPU model answers (on the real node)
      sovereign dev fault gpu-mec1-0 --xid 79
      sovereign dev down
    """


@command.command("up")
@_WORKDIR
@click.option("--no-sample", is_flag=True, help="Do not apply the sample stack (it is still "
              "written to <workdir>/sample-stack.yaml for you to apply).")
@click.option("--nodes", type=click.IntRange(1, 64), default=None,
              help="GPU nodes per region (default: as in fleet.yaml).")
@click.option("--regions", default=None, metavar="R1,R2", callback=_regions,
              help="Regions to simulate, in-country first (default: me-central-1,eu-west-1).")
@click.option("--no-view", is_flag=True, help="Print the kubeconfig and wait, without the live "
              "view (for scripts and CI).")
@click.option("--no-real-node", is_flag=True, help="Simulated nodes only: no real node (which "
              "needs root), so no container runs and the sample's CPU model and chat-client are "
              "left out; nothing answers a chat request.")
def up(workdir: Path, no_sample: bool, nodes: int | None, regions: list[str] | None,
       no_view: bool, no_real_node: bool) -> None:
    """Start the local sovereign cloud and watch the sample stack come up; Ctrl-C tears it down.

    By default a real node (kubelet, containerd, CNI, kube-proxy, CoreDNS; needs root) joins the
    first region, and the sample's CPU-engine model `chat-cpu` really runs there and answers
    `sovereign chat chat-cpu "Say hello"`; the GPU model `chat` stays on the simulated H100s.
    Each run starts afresh: what an earlier run left in the work directory (processes, even of a
    killed run, cluster and MinIO data, logs) is cleaned up first.

    \b
    Example:
      sovereign dev up --nodes 2 --regions me-central-1,eu-west-1
      kubectl --kubeconfig ~/.local/state/sovereign/dev/cluster/kubeconfig get sstack -A
    \b
    Exit codes: 0 stopped (Ctrl-C, SIGTERM or `sovereign dev down`); 2 bad options; 3 the
    environment could not start, or a process of it died: the message names the component, its
    log and the log's last lines. Whatever the ending, every process the run started is stopped.
    """
    console = Console()
    env = DevEnvironment(workdir=workdir, gpu_nodes_per_region=nodes,
                         regions=regions,
                         real_node=not no_real_node,
                         say=lambda message: console.print(message, highlight=False))
    # SIGTERM (`sovereign dev down`) and SIGHUP (the terminal closed) end the run like Ctrl-C;
    # SIGINT too when a shell started us in the background with it ignored (`kill -INT` works).
    # A SIGHUP ignored on purpose (nohup) stays ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _interrupt)
    failure: str | None = None
    try:
        _run(env, console=console, no_sample=no_sample, no_view=no_view)
    except KeyboardInterrupt:
        pass
    except (DevEnvError, build.BuildError) as err:
        failure = str(err)
    except Exception as err:  # noqa: BLE001 - whatever it was, report it and tear down
        failure = _unexpected(env, err)
    finally:
        # Nothing interrupts the teardown: a second Ctrl-C would leave processes behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if env.cluster is not None:
            console.print("tearing down the dev environment ...")
        env.stop()
    if failure is None:
        console.print("stopped.")
        return
    console.print(f"[red]error:[/] sovereign dev up failed: {escape(failure)}", highlight=False,
                  soft_wrap=True)
    if env.cluster is not None:
        console.print(f"Every process it started is stopped; the logs stay in {env.logs} and "
                      f"{env.workdir / 'cluster' / 'logs'}.", highlight=False, soft_wrap=True)
    sys.exit(3)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(env: DevEnvironment, *, console: Console, no_sample: bool, no_view: bool) -> None:
    """Start, apply the sample, then show the view (or wait) until interrupted or a process dies."""
    console.print("[bold]building or reusing the control-plane binaries[/] "
                  f"(cache: {build.cache_root()})")
    env.start()
    env.wait_operator_ready()
    if not no_sample:
        env.apply_sample()
    assert env.cluster is not None
    kubeconfig = env.cluster.kubeconfig
    header = Panel(
        f"kubeconfig: [bold]{kubeconfig}[/]\n"
        f"  export KUBECONFIG={kubeconfig}; kubectl get sstack -A\n"
        f"sample stack: {env.sample_path}"
        + ("  (not applied: kubectl apply -f it)" if no_sample else
           f"  ({SAMPLE_NAMESPACE}/{SAMPLE_STACK})")
        + (f"\nask the CPU model on the real node ({CPU_MODEL}), once it is Ready:\n"
           f"  {escape(env.chat_commands()['sovereign'])}" if env.real_node and not no_sample else "")
        + f"\nlogs: {env.logs} and {env.workdir / 'cluster' / 'logs'}\n"
        "Ctrl-C or `sovereign dev down` stops everything.",
        title="sovereign dev", title_align="left")
    # Plain and unwrapped, so scripts (and people copying it) get the path whole.
    console.print(f"kubeconfig: {kubeconfig}", soft_wrap=True, highlight=False)
    if env.real_node and not no_sample:
        # Whole and unwrapped, to be copied: the same question with curl, through the apiserver.
        console.print(f"chat with curl: {env.chat_commands()['curl']}", soft_wrap=True,
                      highlight=False, markup=False)
    env.phase = "watching the running environment"
    if no_view:
        console.print(header)
        while True:
            env.check()
            time.sleep(1)
    else:
        from sovereign.kube.client import Kube
        from sovereign.services.overview import read_overview

        kube = Kube.connect(kubeconfig=kubeconfig)

        def read() -> Overview:
            env.check()
            return read_overview(kube)

        _view.watch(read, console=console, header=header)


def _unexpected(env: DevEnvironment, err: Exception) -> str:
    """One paragraph for a failure nobody foresaw; the traceback goes to a file, not the screen."""
    trace = env.logs / "dev-up-error.log"
    # Its message on one line, cut short: the whole of it is in the file.
    said = " ".join(str(err).split())
    said = said if len(said) <= 400 else said[:400] + " ..."
    try:
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_text("".join(traceback.format_exception(err)))
        where = f"; the traceback is in {trace}"
    except OSError:
        where = ""
    return f"{type(err).__name__} while {env.phase}: {said}{where}"


@command.command("down")
@_WORKDIR
def down(workdir: Path) -> None:
    """Stop the dev environment started by `sovereign dev up` (from any terminal).

    \b
    Example:
      sovereign dev down
    \b
    Exit codes: 0 stopped (also what a killed `dev up` left running); 1 nothing was running there.
    """
    if not stop_running(workdir):
        click.echo(f"no dev environment runs from {workdir}")
        sys.exit(1)
    click.echo("stopped.")


@command.command("fault")
@click.argument("node")
@_WORKDIR
@click.option("--gpu", type=int, default=0, show_default=True, help="Index of the GPU.")
@click.option("--xid", type=int, help="Deliver one XID event with this code (e.g. 79: fallen "
              "off the bus; 13: an application error).")
@click.option("--fault", "preset", type=click.Choice(sorted(fake_nvml.FAULTS)),
              help="Set a preset fault on the GPU.")
@click.option("--clear", is_flag=True, help="Reset every GPU of the node: faults cleared and NVML's "
              "recovery action back to None, which releases XIDs held until a reset.")
def fault(node: str, workdir: Path, gpu: int, xid: int | None, preset: str | None,
          clear: bool) -> None:
    """Script a GPU fault on a simulated node; its agent reports it within a poll.

    \b
    Examples:
      sovereign dev fault gpu-mec1-0 --xid 79           # fatal: the GPU fell off the bus
      sovereign dev fault gpu-mec1-1 --fault ecc-dbe --gpu 3
      sovereign dev fault gpu-mec1-0 --clear
    \b
    Exit codes: 0 written; 1 no such node or no dev environment; 2 bad options.
    """
    if sum(bool(x) for x in (xid is not None, preset, clear)) != 1:
        raise click.UsageError("give exactly one of --xid, --fault or --clear")
    state = read_state(workdir)
    if not state or "nvml" not in state:
        click.echo(f"no dev environment runs from {workdir} (or it is still starting): start "
                   "one with `sovereign dev up`")
        sys.exit(1)
    scenario = state["nvml"].get(node)
    if scenario is None:
        click.echo(f"{node} is not a simulated GPU node; choose one of: "
                   f"{', '.join(sorted(state['nvml']))}")
        sys.exit(1)
    if clear:
        fake_nvml.clear_faults(scenario)
        click.echo(f"{node}: every GPU healthy again (recovery waits for the agent's hysteresis)")
    elif xid is not None:
        fake_nvml.inject_xid(scenario, gpu=gpu, xid=xid)
        click.echo(f"{node}: XID {xid} on GPU {gpu}")
    else:
        fake_nvml.set_fault(scenario, gpu=gpu, fault=preset)
        click.echo(f"{node}: {preset} on GPU {gpu}")
