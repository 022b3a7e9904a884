"""The model loader container: ``sovereign fetch-model`` from the operator's own image.

One builder for the three places weights are copied from an S3 store: the init container of a
replica with its own volume (``cache.layout: PerReplica``) or a node directory (``PerNode``), and
the Job that fills a shared cache claim (``SharedVolume``, ``render.cache``). The loader gets
the store's bucket, region, endpoint and credentials (by Secret reference), the model's path,
the allowed regions (it refuses a bucket outside them) and where to write; with ``report`` it
also writes its report, as JSON, to the container's termination message, where the operator
reads what a shared cache holds (files, bytes, verified) without any access to the volume.

Pure; called by ``render.inference`` and ``render.cache``.
"""

from __future__ import annotations

from typing import Any

from sovereign.api import DataStore, ModelSpec, SovereignStack
from sovereign.render import pod, storage
from sovereign.render.facts import ClusterFacts

# The environment ``sovereign fetch-model`` reads (cli/fetch_model.py). Builders may not import
# the CLI; tests/unit/render/test_render_inference.py parses the rendered container with the
# real command to hold the two sides together.
LOADER_ENDPOINT = "SOVEREIGN_S3_ENDPOINT"
LOADER_REGION = "SOVEREIGN_S3_REGION"
LOADER_BUCKET = "SOVEREIGN_MODEL_BUCKET"
LOADER_PATH = "SOVEREIGN_MODEL_PATH"
LOADER_DEST = "SOVEREIGN_MODEL_DIR"
LOADER_ALLOWED_REGIONS = "SOVEREIGN_ALLOWED_REGIONS"
LOADER_PATH_STYLE = "SOVEREIGN_S3_PATH_STYLE"
LOADER_REPORT = "SOVEREIGN_FETCH_REPORT"
LOADER_FSYNC = "SOVEREIGN_FETCH_FSYNC"
#: Where Kubernetes takes a container's termination message from (the default path).
TERMINATION_LOG = "/dev/termination-log"
MODELS_ROOT = "/models"
#: The user llama-server and the loader run as (the operator image's user): the weights the
#: loader writes are the server's to read, and neither runs as root.
RUN_AS = 65532
#: A container that cannot gain privileges or write outside its volumes.
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def weights_path(model: ModelSpec) -> str:
    return f"{MODELS_ROOT}/{model.name}"


def loader(*, stack: SovereignStack, model: ModelSpec, store: DataStore, facts: ClusterFacts,
           report: bool = False) -> dict[str, Any]:
    """The loader container, writing ``weights_path(model)`` on the volume ``weights``."""
    s3 = store.s3
    assert s3 is not None, "the loader only runs for S3 sources"
    env = [
        pod.value(LOADER_REGION, s3.region),
        pod.value(LOADER_BUCKET, s3.bucket),
        pod.value(LOADER_PATH, model.source.path),
        pod.value(LOADER_DEST, weights_path(model)),
        pod.value(LOADER_ALLOWED_REGIONS, ",".join(sorted(stack.spec.residency.regions))),
        pod.value(LOADER_PATH_STYLE, "true" if s3.force_path_style else "false"),
        *storage.credentials_env(store),
    ]
    if s3.endpoint:
        env.append(pod.value(LOADER_ENDPOINT, s3.endpoint))
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": facts.operator_image,
        "command": ["sovereign", "fetch-model"],
        "args": ["--progress=plain"],
    }
    if report:
        env.append(pod.value(LOADER_REPORT, TERMINATION_LOG))
        # The cache Job's files are read from other nodes, where this node's boot vouches for
        # nothing: flushed to disk, its manifest vouches for them on any node.
        env.append(pod.value(LOADER_FSYNC, "true"))
    container["env"] = pod.sorted_env(env)
    container["volumeMounts"] = [{"name": "weights", "mountPath": MODELS_ROOT}]
    if report:
        # A loader that failed before writing its report leaves the end of its log instead: the
        # error line, which the operator shows.
        container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container
