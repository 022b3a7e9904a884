"""`sovereign report` of the full sample, as the operator runs it: every pod, volume and bucket
with its region.

The full sample is reconciled by a real `sovereign run` on the simulated cloud (Karpenter and
existing GPU nodes, statically provisioned volumes in me-central-1, the bucket on the
me-central-1 MinIO server) until Ready; the report is then made by the CLI, as an auditor would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.scenario import is_ready, operated_cloud


def test_the_report_of_the_full_sample_places_every_pod_volume_and_bucket(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str, minio_servers, tmp_path: Path) -> None:
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    with operated_cloud(cluster, api_client, namespace, store=minio_servers["me-central-1"],
                        log=tmp_path / "operator.log") as (cloud, _):
        document = cloud.sample()
        name = document["metadata"]["name"]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
        wait_until(lambda: is_ready(api_client, namespace, name), timeout=240,
                   message=f"{name} Ready (operator log: {tmp_path / 'operator.log'})")
        # Every claim bound, so each volume has a place to report.
        wait_until(lambda: all(c.status.phase == "Bound" for c in
                               core.list_namespaced_persistent_volume_claim(namespace).items),
                   timeout=120, message="every claim Bound")

        made = subprocess.run(
            [sys.executable, "-m", "sovereign", "report", name, "-n", namespace, "--format", "json"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": cluster.kubeconfig})
        assert made.returncode == 0, made.stderr
        evidence = json.loads(made.stdout)

    reported_pods = {p["name"]: p for p in evidence["pods"]}
    assert reported_pods, "the report lists no pod"
    assert {p["region"] for p in reported_pods.values()} == {"me-central-1"}
    assert all(p["node"] and p["check"]["ok"] for p in reported_pods.values())
    models_and_apps = {m["name"] for m in document["spec"]["models"]} | {a["name"] for a in document["spec"]["applications"]}
    assert {n.rsplit("-", 2)[0] for n in reported_pods} == models_and_apps

    assert evidence["volumes"], "the report lists no volume"
    for volume in evidence["volumes"]:
        assert volume["volume"] and volume["region"] == "me-central-1", volume
    assert "scratch" in {v["claim"] for v in evidence["volumes"]}  # the sample's volume store

    (store,) = evidence["stores"]
    assert (store["name"], store["bucket"]) == ("corpus", cloud.bucket)
    assert store["observedRegion"] == "me-central-1" and store["summary"]["ok"]
