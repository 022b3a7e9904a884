"""`sovereign render` of each sample is exactly what the operator applies for it.

For every sample in manifests/samples/, the operator (a real `sovereign run`) reconciles it in a
namespace of its own, with its S3 store pointed at a compliant bucket on the MinIO server of the
sample's region; then `sovereign render` of the same file, given the cluster's nodes as facts,
must name the same objects with the same spec hashes as the live ones. A GitOps preview made with
`sovereign render` is therefore the truth, not an approximation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION, load_documents
from sovereign_dev.cluster import REPO_ROOT, DevCluster, wait_until
from sovereign_dev.scenario import SimulatedCloud, operated_cloud
from sovereign.kube.client import Kube
from sovereign.kube.resources import resource_type
from sovereign.render.names import SPEC_HASH_ANNOTATION, STACK_LABEL

SAMPLES = sorted((REPO_ROOT / "manifests" / "samples").glob("*.yaml"))


def _in_cloud(document: dict[str, Any], cloud: SimulatedCloud) -> dict[str, Any]:
    """The sample with every S3 store pointed at the cloud's bucket and credentials, holding a
    GGUF file where each llama-cpp model expects one (the operator holds the model back otherwise,
    which an offline render cannot know)."""
    for store in document["spec"].get("dataStores", []):
        if "s3" in store:
            store["s3"] |= {"bucket": cloud.bucket, "endpoint": cloud.store.endpoint,
                            "region": cloud.store.region, "forcePathStyle": True,
                            "credentialsSecretRef": {"name": "s3-creds"}}
    for model in document["spec"].get("models", []):
        if model.get("engine") == "llama-cpp":
            cloud.store.client().put_object(Bucket=cloud.bucket, Key=model["source"]["path"], Body=b"GGUF" + bytes(64))
    return document


def _render(stack_file: Path, nodes_file: Path, namespace: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "sovereign", "render", "-f", str(stack_file), "--facts", str(nodes_file),
         "-n", namespace], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_render_of_each_sample_equals_what_the_operator_applied(
        sample: Path, cluster: DevCluster, api_client: client.ApiClient, namespace: str, minio_servers,
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    (document,) = load_documents(sample.read_text())
    region = document["spec"]["residency"]["regions"][0]
    custom = client.CustomObjectsApi(api_client)
    # A client of its own: Kube gives its client the operator's user agent.
    kube = Kube(cluster.api_client())
    request.addfinalizer(kube.close)
    with operated_cloud(cluster, api_client, namespace, store=minio_servers[region],
                        log=tmp_path / "operator.log") as (cloud, _):
        document = _in_cloud(document, cloud)
        name = document["metadata"]["name"]
        stack_file = tmp_path / "stack.yaml"
        stack_file.write_text(yaml.safe_dump(document))
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)

        def reconciled() -> bool:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status")
            return bool(status) and status.get("observedGeneration") == 1

        wait_until(reconciled, timeout=180, message=f"the operator's first pass over {name}")
        nodes_file = tmp_path / "nodes.yaml"
        nodes = client.CoreV1Api(api_client).list_node()
        nodes_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
            api_client.sanitize_for_serialization(n) for n in nodes.items]}))
        rendered = _render(stack_file, nodes_file, namespace)

        hashed = [o for o in rendered if SPEC_HASH_ANNOTATION in (o["metadata"].get("annotations") or {})]
        assert {o["kind"] for o in hashed} >= {"Deployment", "Service", "NetworkPolicy"}
        for obj in hashed:
            meta = obj["metadata"]
            live = kube.get(resource_type(obj), name=meta["name"], namespace=meta.get("namespace"))
            assert live is not None, f"{obj['kind']} {meta['name']} rendered but not applied"
            assert live["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == meta["annotations"][SPEC_HASH_ANNOTATION], (
                f"{obj['kind']} {meta['name']}: the operator applied something else than render prints")
        # ... and the operator applied nothing that render does not print (objects others made
        # from its templates, such as the claims of the pods' ephemeral volumes, carry the
        # stack label too, but no spec hash).
        for kind in {resource_type(o) for o in hashed if o["metadata"].get("namespace")}:
            applied = {o["metadata"]["name"] for o in kube.list(kind, namespace=namespace,
                                                                 selector=f"{STACK_LABEL}={name}")
                       if SPEC_HASH_ANNOTATION in (o["metadata"].get("annotations") or {})}
            assert applied == {o["metadata"]["name"] for o in hashed if o["kind"] == kind.kind}
