"""``sovereign agent`` as a user starts it: the errors that stop it, and what it creates."""

from __future__ import annotations

import subprocess
import sys

import yaml

from sovereign_dev.nvml_fake import healthy_node, load_scenario


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sovereign", "agent", "--metrics-address",
                           "127.0.0.1", "--metrics-port", "0", *args],
                          capture_output=True, text=True, timeout=120)


def test_an_unknown_node_stops_the_agent_naming_the_setting(cluster, tmp_path):
    scenario = tmp_path / "nvml.json"

    result = run_agent("--node", "no-such-node", "--kubeconfig", cluster.kubeconfig,
                       "--fake-nvml", str(scenario))

    assert result.returncode == 3
    assert ("node no-such-node not found; the agent's --node (NODE_NAME) must be the name of the "
            "node it runs on") in result.stderr
    # A missing fake scenario is created: eight healthy H100s, named after the node.
    assert load_scenario(scenario) == healthy_node(seed="no-such-node")


def test_a_bad_config_stops_the_agent_naming_the_field(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"poll_interval_s": 5,
                                      "health": {"application_xids": [13, 79]}}))

    result = run_agent("--node", "gpu-0", "--config", str(config))

    assert result.returncode == 1
    assert f"agent config {config} is invalid: health: Value error, reboot_xids and " \
           "application_xids both list XID 79; remove it from one of them" in result.stderr
