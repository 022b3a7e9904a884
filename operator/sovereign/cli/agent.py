"""``sovereign agent``: the GPU node agent (a DaemonSet on GPU nodes, or a process per simulated
node in the dev cluster).

Thin: parses flags, builds the NVML reader (real, or the fake with ``--fake-nvml``), the API
client and the metrics server, then runs ``services.node_agent.NodeAgent`` until SIGTERM/SIGINT.
Exit codes: 0 on a signal, 1 for a bad config file, 3 when the node cannot be found or read
(wrong NODE_NAME, missing RBAC, unreachable API server).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click

from sovereign.kube.client import load_api_client
from sovereign.kube.nodes import NodeError
from sovereign.nvml import open_reader
from sovereign.services.gpu_metrics import GpuMetrics, serve_metrics
from sovereign.services.node_agent import AgentSettings, NodeAgent

log = logging.getLogger("sovereign.agent")


@click.command("agent", context_settings={"show_default": True})
@click.option("--node", envvar="NODE_NAME", required=True,
              help="Name of the node this agent watches and marks (env NODE_NAME, set it from "
                   "the downward API spec.nodeName).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="Kubeconfig file; default: the pod's ServiceAccount, else ~/.kube/config.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              envvar="SOVEREIGN_AGENT_CONFIG",
              help="YAML agent config (poll_interval_s, xid_settle_s, fatal_taint_effect, "
                   "health: thresholds and XID lists).")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between NVML polls (overrides poll_interval_s of --config).")
@click.option("--metrics-address", default="0.0.0.0", help="Address of the /metrics server.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9401,
              help="Port of the /metrics server (dcgm-exporter's is 9400); 0 lets the agent "
                   "bind any free port and name it in its log line 'metrics on ADDR:PORT/metrics' "
                   "(how the local cloud runs a hundred agents on one machine).")
@click.option("--fake-nvml", type=click.Path(dir_okay=False, path_type=Path),
              envvar="SOVEREIGN_FAKE_NVML",
              help="Read GPUs from this fake NVML scenario file instead of the driver; it is "
                   "created with 8 healthy H100s if missing, and re-read when it changes.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              default="INFO")
def command(node: str, kubeconfig: str | None, config_path: str | None, interval: float | None,
            metrics_address: str, metrics_port: int, fake_nvml: Path | None,
            log_level: str) -> None:
    """Watch this node's GPUs through NVML: metrics, the GPUHealthy condition and a taint.

    \b
    Examples:
      sovereign agent --node "$NODE_NAME"
      sovereign agent --node gpu-mec1-0 --kubeconfig dev.kubeconfig --fake-nvml gpu-mec1-0.json
    \b
    Exit codes: 0 stopped; 1 the --config file is not valid; 3 the node is missing, forbidden
    or the apiserver unreachable.
    """
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = AgentSettings.from_file(config_path) if config_path else AgentSettings()
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if interval is not None:
        settings = settings.model_copy(update={"poll_interval_s": interval})
    if fake_nvml is not None and not fake_nvml.exists():
        fake = _fake_nvml_module()
        fake.write_scenario(fake_nvml, fake.healthy_node(seed=node))

    metrics = GpuMetrics(hostname=node)
    reader = open_reader(fake_scenario=fake_nvml)
    api = load_api_client(kubeconfig=kubeconfig)
    server = serve_metrics(metrics=metrics, address=metrics_address, port=metrics_port)
    log.info("GPU agent for node %s; metrics on %s:%d/metrics", node, metrics_address,
             server.server_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        NodeAgent(reader=reader, api=api, node_name=node, settings=settings,
                  metrics=metrics).run(stop=stop)
    except NodeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(3)
    finally:
        server.shutdown()
        reader.close()
        api.close()


def _fake_nvml_module():
    """The fake NVML of the local-cloud harness, which production images do not ship."""
    try:
        from sovereign_dev import nvml_fake
    except ImportError as err:
        raise click.UsageError(
            "--fake-nvml needs the local-cloud harness (package sovereign_dev), which only a "
            "checkout of the repository has (`make setup`); on a GPU node leave the flag out") from err
    return nvml_fake
