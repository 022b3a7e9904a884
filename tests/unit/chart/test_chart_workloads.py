"""The operator Deployment and the GPU agent DaemonSet the chart renders, as a cluster gets them."""

from __future__ import annotations

import click
import pytest
import yaml
from chart_helpers import one

from sovereign_dev.chart import NAMESPACE, RELEASE
from sovereign.cli import main
from sovereign.services.node_agent import AgentSettings

OPERATOR = RELEASE
AGENT = f"{RELEASE}-gpu-agent"
IMAGE = "ghcr.io/sovereign-ai/sovereign-operator:0.1.0"


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env(workload: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(workload).get("env", [])}


def test_the_operator_probes_kopfs_liveness_endpoint_on_the_port_it_serves_it(render):
    operator = container(one(render(), "Deployment", OPERATOR))

    assert "--liveness=http://0.0.0.0:8080/healthz" in operator["args"]
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"health": 8080, "metrics": 9402, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["resources"]["limits"]["memory"] == "512Mi"


def test_the_operator_runs_every_namespace_in_one_peering_and_serves_its_webhooks_through_its_service(render):
    objects = render()
    operator = container(one(objects, "Deployment", OPERATOR))

    assert operator["args"][:2] == ["run", "--all-namespaces"]
    assert f"--peering={OPERATOR}" in operator["args"]
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == OPERATOR
    assert f"--webhook-service={NAMESPACE}/{OPERATOR}:443" in operator["args"]
    service = one(objects, "Service", OPERATOR)
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "webhook": (443, "webhook"), "metrics": (9402, "metrics")}
    # The default certificate is the operator's own: nothing is mounted for it.
    assert not [a for a in operator["args"] if a.startswith("--webhook-cert-file")]


def test_a_rollout_keeps_one_pod_serving_and_peering_keeps_one_reconciling(render):
    deployment = one(render(), "Deployment", OPERATOR)

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert env(deployment)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_operator_tells_model_pods_to_load_weights_with_its_own_image(render):
    deployment = one(render(), "Deployment", OPERATOR)

    assert container(deployment)["image"] == IMAGE
    assert env(deployment)["SOVEREIGN_OPERATOR_IMAGE"] == IMAGE
    pinned = one(render({"image": {"digest": "sha256:" + "a" * 64}}), "Deployment", OPERATOR)
    assert container(pinned)["image"] == f"{IMAGE}@sha256:{'a' * 64}"
    assert env(pinned)["SOVEREIGN_OPERATOR_IMAGE"] == container(pinned)["image"]


def test_both_workloads_run_non_root_on_a_read_only_root_with_a_writable_tmp(render):
    objects = render()
    for workload in (one(objects, "Deployment", OPERATOR), one(objects, "DaemonSet", AGENT)):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container(workload)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container(workload)["volumeMounts"]


def test_a_mounted_certificate_is_passed_to_the_webhook_server(render):
    objects = render({"webhook": {"certificate": {"mode": "certManager"}}})
    deployment = one(objects, "Deployment", OPERATOR)

    certificate = one(objects, "Certificate", f"{OPERATOR}-webhook")
    assert certificate["spec"]["dnsNames"][0] == f"{OPERATOR}.{NAMESPACE}.svc"
    assert certificate["spec"]["secretName"] == f"{OPERATOR}-webhook-tls"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"]["secret"] == {"secretName": f"{OPERATOR}-webhook-tls"}
    args = container(deployment)["args"]
    assert "--webhook-cert-file=/etc/sovereign/webhook-tls/tls.crt" in args
    assert "--webhook-key-file=/etc/sovereign/webhook-tls/tls.key" in args
    # An issuer of the user's replaces the chart's self-signed CA.
    issued = render({"webhook": {"certificate": {"mode": "certManager", "certManager": {"issuerRef": {
        "name": "corporate-ca", "kind": "ClusterIssuer"}}}}})
    assert [o for o in issued if o["kind"] == "Issuer"] == []
    assert one(issued, "Certificate")["spec"]["issuerRef"] == {"name": "corporate-ca", "kind": "ClusterIssuer"}


def test_without_webhooks_nothing_listens_for_admission_reviews(render):
    objects = render({"webhook": {"enabled": False}})
    operator = container(one(objects, "Deployment", OPERATOR))

    assert "--no-webhooks" in operator["args"]
    assert "webhook" not in {p["name"] for p in operator["ports"]}
    assert "webhook" not in {p["name"] for p in one(objects, "Service")["spec"]["ports"]}


def test_watched_namespaces_get_a_peering_object_each(render):
    objects = render({"operator": {"watchNamespaces": ["gov-qa", "gov-ae"]}})
    operator = container(one(objects, "Deployment", OPERATOR))

    assert operator["args"][1:3] == ["--namespace=gov-qa", "--namespace=gov-ae"]
    assert "--all-namespaces" not in operator["args"]
    peerings = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "KopfPeering"]
    assert peerings == [("gov-qa", OPERATOR), ("gov-ae", OPERATOR)]
    assert [o for o in objects if o["kind"] == "ClusterKopfPeering"] == []


def test_the_agent_runs_on_gpu_nodes_through_their_taints_and_its_own(render):
    pod = one(render(), "DaemonSet", AGENT)["spec"]["template"]["spec"]

    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    tolerated = {t["key"]: t["operator"] for t in pod["tolerations"]}
    assert tolerated == {"nvidia.com/gpu": "Exists", "sovereign.ai/gpu-unhealthy": "Exists"}


def test_the_agent_watches_the_node_it_runs_on_through_the_nvidia_runtime(render):
    agent = one(render(), "DaemonSet", AGENT)
    pod = agent["spec"]["template"]["spec"]

    assert env(agent)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert pod["runtimeClassName"] == "nvidia"
    assert env(agent)["NVIDIA_VISIBLE_DEVICES"] == "all"
    # Seeing every GPU must not take any: a GPU request would make the agent a GPU workload.
    assert "nvidia.com/gpu" not in str(container(agent)["resources"])
    assert "privileged" not in container(agent)["securityContext"]


def test_the_agent_can_reach_nvml_through_host_paths_instead(render):
    agent = one(render({"agent": {"nvml": {"mode": "hostPath"}}}), "DaemonSet", AGENT)
    pod = agent["spec"]["template"]["spec"]

    assert "runtimeClassName" not in pod
    assert container(agent)["securityContext"]["privileged"] is True
    assert container(agent)["securityContext"]["allowPrivilegeEscalation"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nvml"]["hostPath"] == {"path": "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "type": "File"}
    assert {"name": "nvml", "mountPath": "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
            "readOnly": True} in container(agent)["volumeMounts"]
    assert env(agent)["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"


def test_the_agents_config_file_is_a_valid_agent_config_and_rolls_the_agents_when_changed(render):
    default, changed = render(), render({"agent": {"config": {"fatal_taint_effect": "NoExecute"}}})

    settings = AgentSettings.model_validate(yaml.safe_load(one(default, "ConfigMap", AGENT)["data"]["agent.yaml"]))
    assert (settings.poll_interval_s, settings.fatal_taint_effect) == (10, "NoSchedule")
    assert AgentSettings.model_validate(yaml.safe_load(
        one(changed, "ConfigMap", AGENT)["data"]["agent.yaml"])).fatal_taint_effect == "NoExecute"
    assert "--config=/etc/sovereign/agent.yaml" in container(one(default, "DaemonSet", AGENT))["args"]

    def config_hash(objects):
        return one(objects, "DaemonSet", AGENT)["spec"]["template"]["metadata"]["annotations"][
            "sovereign.ai/config-hash"]
    assert config_hash(default) != config_hash(changed)


def test_the_operators_network_policy_admits_webhooks_and_scrapes_and_reaches_dns_and_https(render):
    policy = one(render(), "NetworkPolicy", OPERATOR)

    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["webhook", "metrics", "health"]
    egress_ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in policy["spec"]["egress"]]
    assert egress_ports == [[(53, "TCP"), (53, "UDP")], [(443, "TCP"), (6443, "TCP")]]
    scraped_by = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    limited = one(render({"networkPolicy": {"metricsFrom": [scraped_by]}}), "NetworkPolicy")
    assert limited["spec"]["ingress"][1]["from"] == [scraped_by]


def test_every_namespaced_object_lands_in_the_release_namespace_except_the_agents_event_role(render):
    placed = {(o["kind"], o["metadata"].get("namespace")) for o in render(namespace="gov-platform")
              if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering",
                                   "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                                   "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding")}

    assert {namespace for _, namespace in placed} == {"gov-platform", "default"}
    assert {kind for kind, namespace in placed if namespace == "default"} == {"Role", "RoleBinding"}


@pytest.mark.parametrize("values", [{}, {"webhook": {"certificate": {"mode": "certManager"}}},
                                    {"webhook": {"enabled": False}}, {"operator": {"watchNamespaces": ["gov-qa"]}}],
                         ids=["defaults", "mounted-certificate", "no-webhooks", "watched-namespaces"])
def test_the_sovereign_command_accepts_every_argument_the_chart_passes(render, values, monkeypatch, tmp_path):
    objects = render(values)
    monkeypatch.setenv("NODE_NAME", "gpu-node")  # what the downward API gives the agent
    # The agent's --config must exist: the ConfigMap's file, where the pod mounts it.
    config = tmp_path / "agent.yaml"
    config.write_text(one(objects, "ConfigMap", AGENT)["data"]["agent.yaml"])
    for workload, kind in ((OPERATOR, "Deployment"), (AGENT, "DaemonSet")):
        args = [arg.replace("/etc/sovereign/agent.yaml", str(config))
                for arg in container(one(objects, kind, workload))["args"]]
        command = main.get_command(click.Context(main), args[0])

        with command.make_context(args[0], args[1:]) as context:
            assert context.params, f"sovereign {' '.join(args)}"
