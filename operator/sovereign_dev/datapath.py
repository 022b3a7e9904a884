"""The data path of a stack on the real node: weights in an in-country bucket -> engine -> application.

``DataPath`` sets up, around a ``DevCluster`` with a real node, an in-country MinIO server and a
namespace, everything a CPU stack needs to really serve tokens: the images its pods run (the
operator image for the loader init container, llama-server, the chat client) imported into the
node's containerd, a bucket in the store's region holding the generated models, the credentials
Secret the stack's store names; then it writes the stack (``document``/``apply``): one Existing
CPU pool of exactly the real node, the S3 store, one ``engine: llama-cpp`` model ``chat`` and the
chat-client application ``assistant`` that calls it by its logical name. Host-side helpers reach
what a user would reach with ``curl``: the model and application Services by their ClusterIPs
(routable from this machine through kube-proxy on the node).

It starts no operator: the caller runs one (``scenario.OperatorProcess``, or ``sovereign dev up``'s
own). Plain code, no pytest: used by ``e2e/test_data_path.py``, ``bench/first_token.py`` and
``sovereign dev up``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign.render import names
from sovereign_dev import engine, images
from sovereign_dev.cluster import DevCluster
from sovereign_dev.minio import MinioServer

STACK = "datapath"
MODEL = "chat"
APPLICATION = "assistant"
APPLICATION_PORT = 8080
POOL = "cpu"
STORE = "weights"
CREDENTIALS_SECRET = "s3-creds"
#: The images the stack's pods run, beside the pause image every real node has.
NODE_IMAGES = ("operator", "llama-server", "chat-client")
#: The label only the real node carries (``fleet.real_node_labels``): the CPU pool's selector,
#: so the model runs where containers really run and never on a KWOK node.
REAL_NODE_SELECTOR = {"node.kubernetes.io/instance-type": "real-cpu"}


class DataPathError(RuntimeError):
    """The stack's model or application did not answer; the message says what was asked and the answer."""


@dataclass(frozen=True)
class ModelResources:
    """What one replica of the model gets: CPU and memory (requests = limits) and the weights'
    node-local space. The defaults fit the tiny models; a large GGUF file needs more of each."""

    cpu: str = "1"
    memory: str = "1Gi"
    cache: str = "1Gi"


@dataclass
class DataPath:
    """The data path's stack in ``namespace`` of ``cluster`` (which must have a real node), its
    weights in ``store`` (an in-country MinIO server that the node's pods reach)."""

    cluster: DevCluster
    api: client.ApiClient
    namespace: str
    store: MinioServer
    models: Sequence[str] = ("tiny-llama-a", "tiny-llama-b")
    resources: ModelResources = field(default_factory=ModelResources)
    progress: bool = True

    @property
    def bucket(self) -> str:
        # One bucket per namespace: runs side by side on the same MinIO never share weights.
        return f"{self.namespace[:50]}-weights"

    def prepare(self) -> dict[str, str]:
        """Import the pods' images, create the bucket, seed the models and the credentials
        Secret; model name -> object key. Safe to repeat (nothing already there is rewritten)."""
        if self.cluster.node is None:
            raise DataPathError("DataPath needs a DevCluster with a real node: DevCluster(real_node=<region>)")
        images.import_images(address=self.cluster.node.containerd_address, names=list(NODE_IMAGES),
                             progress=self.progress)
        s3 = self.store.client()
        if self.bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=self.bucket,
                             CreateBucketConfiguration={"LocationConstraint": self.store.region})
            s3.put_bucket_encryption(Bucket=self.bucket, ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        keys = engine.seed_models(client=s3, bucket=self.bucket, names=list(self.models))
        secret = {"metadata": {"name": CREDENTIALS_SECRET},
                  "stringData": {"AWS_ACCESS_KEY_ID": self.store.access_key,
                                 "AWS_SECRET_ACCESS_KEY": self.store.secret_key}}
        core = client.CoreV1Api(self.api)
        try:
            core.create_namespaced_secret(self.namespace, secret)
        except client.ApiException as err:
            if err.status != 409:
                raise
            core.replace_namespaced_secret(CREDENTIALS_SECRET, self.namespace, secret)
        return keys

    def document(self, *, model: str, cache: dict[str, Any] | None = None, replicas: int = 1,
                 evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stack, serving generated model ``model`` behind the logical name ``chat`` with
        ``replicas`` replicas; ``cache`` is the model's cache block beyond its size (such as
        ``{"layout": "SharedVolume", "storageClassName": provisioner.SHARED_CLASS}``), and
        ``evaluation`` the model's evaluation block (blue/green rollouts), with the dataset in
        this store."""
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "SovereignStack",
            "metadata": {"name": STACK, "namespace": self.namespace},
            "spec": {
                "residency": {"jurisdiction": "QA", "regions": [self.store.region]},
                "nodePools": [{"name": POOL, "provisioner": "Existing",
                               "existing": {"nodeSelector": dict(REAL_NODE_SELECTOR)}}],
                "dataStores": [{"name": STORE, "s3": {
                    "bucket": self.bucket, "region": self.store.region, "endpoint": self.store.endpoint,
                    "forcePathStyle": True, "credentialsSecretRef": {"name": CREDENTIALS_SECRET}}}],
                "models": [{
                    "name": MODEL, "engine": "llama-cpp", "model": model, "nodePool": POOL,
                    "source": {"dataStore": STORE, "path": engine.model_key(model)},
                    "resources": {"cpu": self.resources.cpu, "memory": self.resources.memory},
                    "cache": {"size": self.resources.cache, **(cache or {})},
                    "replicas": replicas,
                    **({"evaluation": evaluation} if evaluation else {}),
                }],
                "applications": [{"name": APPLICATION, "image": images.CHAT_CLIENT_IMAGE, "models": [MODEL],
                                  "port": APPLICATION_PORT}],
            },
        }

    def apply(self, *, model: str, cache: dict[str, Any] | None = None, replicas: int = 1,
              evaluation: dict[str, Any] | None = None) -> None:
        """Create the stack serving ``model``, or switch the existing one to it (``model``,
        ``source.path``, ``cache``, ``replicas`` and ``evaluation``, as a user edits the YAML)."""
        custom = client.CustomObjectsApi(self.api)
        document = self.document(model=model, cache=cache, replicas=replicas, evaluation=evaluation)
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, document)
        except client.ApiException as err:
            if err.status != 409:
                raise
            custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, STACK,
                                                  {"spec": {"models": document["spec"]["models"]}})

    def stack(self) -> dict[str, Any]:
        return client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, STACK)

    def conditions(self) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in (self.stack().get("status") or {}).get("conditions") or []}

    def model_pods(self, *, terminating: bool = False) -> list[client.V1Pod]:
        """The model's replicas; those being deleted only when ``terminating`` (one still serves:
        kube-proxy sends a Service with no ready endpoint to a terminating one)."""
        selector = f"{names.NAME_LABEL}={MODEL},{names.COMPONENT_LABEL}={names.Component.INFERENCE.value}"
        return [p for p in client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=selector).items
                if terminating or p.metadata.deletion_timestamp is None]

    def wait(self, what: str, predicate: Callable[[], Any], *, timeout: float,
             log_tail: Callable[[], str] = lambda: "") -> Any:
        """``predicate()``'s first true answer, asked every half second (API and HTTP errors of a
        stack on its way count as not yet); after ``timeout`` seconds a ``DataPathError`` with
        what a user would look at: the stack's conditions, each pod's containers, ``log_tail()``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = predicate()
            except (OSError, client.ApiException, ValueError, KeyError, DataPathError):
                result = None
            if result:
                return result
            time.sleep(0.5)
        conditions = {k: (v["status"], v["reason"], v["message"]) for k, v in self.conditions().items()}
        pods = {p.metadata.name: (p.status.phase, [(s.name, s.state.to_dict()) for s in
                                                   (p.status.init_container_statuses or [])
                                                   + (p.status.container_statuses or [])])
                for p in client.CoreV1Api(self.api).list_namespaced_pod(self.namespace).items}
        raise DataPathError(f"timed out after {timeout:.0f}s waiting for {what}\nconditions: {conditions}\n"
                            f"pods: {pods}\nlog:\n{log_tail()}")

    # -- what a user reaches with curl ------------------------------------------------------------

    def service_url(self, name: str) -> str:
        """``http://<ClusterIP>:<port>`` of the stack's Service ``name`` (routable from this machine)."""
        service = client.CoreV1Api(self.api).read_namespaced_service(name, self.namespace)
        return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"

    def served_models(self, *, timeout: float = 10) -> list[str]:
        """The names the model Service answers to (``GET /v1/models``: the logical name and the model)."""
        reply = _get_json(f"{self.service_url(MODEL)}/v1/models", timeout=timeout)
        return [alias for entry in reply["data"] for alias in entry.get("aliases", [entry["id"]])]

    def props(self, *, timeout: float = 10) -> dict[str, Any]:
        """llama-server's ``GET /props`` through the model Service (``model_path``: the file it serves)."""
        return _get_json(f"{self.service_url(MODEL)}/props", timeout=timeout)

    def chat(self, *, content: str, max_tokens: int = 8, timeout: float = 60) -> dict[str, Any]:
        """One chat completion from the model Service, by the logical name."""
        body = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
        return _get_json(f"{self.service_url(MODEL)}/v1/chat/completions", data=json.dumps(body).encode(),
                         timeout=timeout)

    def ask(self, question: str, *, timeout: float = 60) -> dict[str, Any]:
        """The application's answer (``GET /ask?q=``): ``{"model", "servedBy", "answer", "seconds"}``."""
        query = urllib.parse.urlencode({"q": question})
        return _get_json(f"{self.service_url(APPLICATION)}/ask?{query}", timeout=timeout)

    def wait_first_token(self, *, timeout: float, interval: float = 0.1) -> float:
        """Block until a chat completion through the model Service answers; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.chat(content="hello", max_tokens=1, timeout=30)["choices"]:
                    return time.monotonic()
            except (OSError, ValueError, KeyError, DataPathError, client.ApiException) as err:
                last = err
            time.sleep(interval)
        raise DataPathError(f"no chat completion from Service {self.namespace}/{MODEL} within {timeout:.0f}s; "
                            f"last error: {last!r}")


def ready(pod: client.V1Pod) -> bool:
    """Whether the pod passed its readiness probes."""
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _get_json(url: str, *, data: bytes | None = None, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        raise DataPathError(f"{url} answered {err.code}: {err.read().decode(errors='replace')[:500]}") from err
