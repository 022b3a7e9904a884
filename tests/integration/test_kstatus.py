"""The stack's status, as kstatus judges it: what Flux's health checks (and kstatus-based tools)
see across create, update and failure.

kstatus here is the real library (github.com/fluxcd/cli-utils, the copy Flux runs), built from
its Go module like the control plane (``devcluster.build``, component ``kstatus``); the stack is
the full sample, reconciled by a real ``sovereign run`` on the simulated cloud.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign_dev import build
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.scenario import operated_cloud

WAIT = 240


def kstatus(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as kstatus computes them for ``obj``."""
    binary = build.ensure("kstatus") / "kstatus"
    result = subprocess.run([str(binary)], input=json.dumps(obj) + "\n", capture_output=True, text=True,
                            timeout=30, check=True)
    answer = json.loads(result.stdout)
    return answer["status"], answer["message"]


def test_kstatus_follows_the_stack_through_create_update_and_failure(
        cluster: DevCluster, api_client: client.ApiClient, namespace: str, minio_servers, tmp_path: Path) -> None:
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)

    def stack() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def judged(expected: str, *, generation: int) -> tuple[str, str] | None:
        # kstatus calls an object without any status "Current" (it cannot tell a stack the
        # operator has not seen yet from one that needs no status): judge observed ones only.
        body = stack()
        if (body.get("status") or {}).get("observedGeneration") != generation:
            return None
        verdict = kstatus(body)
        return verdict if verdict[0] == expected else None

    with operated_cloud(cluster, api_client, namespace, store=minio_servers["me-central-1"],
                        log=tmp_path / "operator.log") as (cloud, _):
        document = cloud.sample()
        name = document["metadata"]["name"]
        # Create: Current once the operator reports Ready for generation 1.
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
        wait_until(lambda: judged("Current", generation=1), timeout=WAIT,
                   message="kstatus Current after create")
        assert next(c for c in stack()["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"

        # Update: the object the apiserver returns for the change is InProgress (generation 2
        # not yet observed), then Current again once the operator has caught up.
        changed = custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            {"spec": {"applications": [{**document["spec"]["applications"][0], "replicas": 3},
                                       *document["spec"]["applications"][1:]]}})
        status, message = kstatus(changed)
        assert status == "InProgress"
        assert "generation is 2, but latest observed generation is 1" in message
        wait_until(lambda: judged("Current", generation=2), timeout=WAIT,
                   message="kstatus Current after update")

        # Failure a person must fix (the store's credentials are gone): Failed, not a wait.
        core.delete_namespaced_secret("s3-creds", namespace)
        status, message = wait_until(lambda: judged("Failed", generation=2), timeout=WAIT,
                                     message="kstatus Failed")
        assert "CredentialsSecretMissing" in json.dumps(stack()["status"]["conditions"])
        assert "s3-creds" in message

        # Fixed: the Secret is back, and so is Current.
        core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": {
            "AWS_ACCESS_KEY_ID": cloud.store.access_key, "AWS_SECRET_ACCESS_KEY": cloud.store.secret_key}})
        wait_until(lambda: judged("Current", generation=2), timeout=WAIT,
                   message="kstatus Current after the fix")
