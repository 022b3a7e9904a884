"""The operator's Kubernetes client: server-side apply, reads by label, prune, status and events.

``Kube`` wraps one ``kubernetes.client.ApiClient`` and speaks plain REST with plain dicts, so a
manifest from ``render`` goes to the apiserver exactly as rendered:

- ``apply``: server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
  ``fieldManager=sovereign-operator&force=true``). Fields left out of a manifest are left to
  their other owners, such as ``replicas`` under an autoscaler; fields the operator applied
  before and leaves out now are removed. ``apply_status`` does the same on ``/status``.
- ``get``, ``list`` (by label selector), ``delete`` (background propagation, guarded by uid).
- ``record_event``: a core/v1 Event about an object.
- ``post_to_service``: a request to a Service through the apiserver's proxy (``sovereign chat``).

Every request identifies as ``sovereign-operator/<version>`` (the apiserver's audit log shows
it) and every failure is one of ``kube.errors``. Created once by the CLI (``sovereign run``) or
a test and passed down to ``services``; thread-safe (Kopf runs sync handlers in threads).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sovereign import __version__
from sovereign.kube import errors
from sovereign.kube.resources import EVENT, POD, ResourceType, resource_type

#: The one field manager of everything the operator applies.
FIELD_MANAGER = "sovereign-operator"
#: What the operator's requests identify as; the apiserver's audit log records it.
USER_AGENT = f"sovereign-operator/{__version__}"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
#: Seconds to connect and to wait for an answer; the apiserver answers writes within its own 60s.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 70

Manifest = dict[str, Any]


class Kube:
    """Kubernetes I/O for the operator. See the module docstring."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.api.user_agent = USER_AGENT

    @classmethod
    def connect(cls, *, kubeconfig: str | None = None) -> Kube:
        """A client from ``kubeconfig``, else the pod's ServiceAccount, else ``$KUBECONFIG`` / ~/.kube/config."""
        return cls(load_api_client(kubeconfig=kubeconfig))

    def close(self) -> None:
        self.api.close()

    # -- reads ----------------------------------------------------------------------------------

    def get(self, kind: ResourceType, *, name: str, namespace: str | None = None) -> Manifest | None:
        """The object, or None when it does not exist."""
        try:
            return self._request("GET", kind.path(namespace=namespace, name=name), action="read",
                                 what=_describe(kind, namespace, name))
        except errors.NotFound:
            return None

    def list(self, kind: ResourceType, *, namespace: str | None = None, selector: str | None = None) -> list[Manifest]:
        """Objects of ``kind`` (in ``namespace``, or everywhere) matching the label ``selector``."""
        query = [("labelSelector", selector)] if selector else []
        where = f"{kind.kind} objects" + (f" in {namespace}" if namespace else "") + (f" with {selector}" if selector else "")
        answer = self._request("GET", kind.path(namespace=namespace), query=query, action="list", what=where)
        # Items of a list come without apiVersion and kind; callers compare them with manifests.
        return [{"apiVersion": kind.api_version, "kind": kind.kind, **item} for item in answer.get("items") or []]

    def username(self) -> str:
        """The user name the apiserver knows this client by (a SelfSubjectReview)."""
        answer = self._request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                               body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                               content_type="application/json", action="review", what="the operator's own identity")
        return answer["status"]["userInfo"]["username"]

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, field_manager: str = FIELD_MANAGER) -> Manifest:
        """Server-side apply ``obj`` as ``field_manager`` (the reconciler's by default); the object as stored."""
        return self._apply(obj, subresource=None, dry_run=dry_run, field_manager=field_manager)

    def apply_status(self, obj: Mapping[str, Any]) -> Manifest:
        """Server-side apply the ``status`` of ``obj`` (apiVersion, kind, metadata.name/namespace, status)."""
        return self._apply(obj, subresource="status", dry_run=False, field_manager=FIELD_MANAGER)

    def merge_patch(self, kind: ResourceType, *, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None) -> Manifest:
        """A JSON merge patch of an existing object (``NotFound`` if it does not exist).

        For objects that are not the operator's own, such as the labels it puts on nodes: unlike
        an apply, a patch never creates the object when it has just gone away.
        """
        return self._request("PATCH", kind.path(namespace=namespace, name=name), body=dict(patch),
                             content_type="application/merge-patch+json", action="patch",
                             what=_describe(kind, namespace, name))

    def delete(self, kind: ResourceType, *, name: str, namespace: str | None = None, uid: str | None = None) -> bool:
        """Delete the object (dependents in the background); False when it was already gone.

        With ``uid``, only that incarnation: a namesake created since is left alone.
        """
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._request("DELETE", kind.path(namespace=namespace, name=name), body=options,
                          content_type="application/json", action="delete", what=_describe(kind, namespace, name))
        except errors.NotFound:
            return False
        return True

    def record_event(self, *, regarding: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``regarding`` (what ``kubectl describe`` lists under Events)."""
        meta = regarding["metadata"]
        namespace = meta.get("namespace") or "default"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": regarding["apiVersion"],
                "kind": regarding["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._request("POST", EVENT.path(namespace=namespace), body=event, content_type="application/json",
                      action="record an event about", what=f"{regarding['kind']} {namespace}/{meta['name']}")

    def post_to_service(self, *, namespace: str, service: str, port: int, path: str,
                        body: Mapping[str, Any], timeout: float = READ_TIMEOUT) -> Manifest:
        """POST JSON ``body`` to ``path`` of a Service through the apiserver's service proxy.

        ``/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/<path>``: the apiserver forwards the
        request to one ready endpoint of the Service, so a caller needs nothing but a kubeconfig
        (no port-forward, no ingress). Errors are ``kube.errors`` as for every request; the
        apiserver answers 503 when the Service has no ready endpoint.
        """
        what = f"Service {namespace}/{service}:{port}"
        return self._request("POST", f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/"
                             f"{path.lstrip('/')}", body=dict(body), content_type="application/json",
                             action=f"POST /{path.lstrip('/')} to", what=what, timeout=timeout)

    def pod_log(self, *, namespace: str, name: str, container: str, tail_lines: int) -> str:
        """The last ``tail_lines`` lines of a container's log (the kubelet's, through the apiserver)."""
        path = POD.path(namespace=namespace, name=name, subresource="log")
        data = self._send("GET", path, query=[("container", container), ("tailLines", str(tail_lines))],
                          # The log is plain text whatever is asked; the apiserver refuses an Accept
                          # without a type it negotiates (406), so kubectl's header.
                          accept="application/json, */*", action="read the log of", what=f"pod {namespace}/{name}")
        return data.decode(errors="replace")

    # -- internals ------------------------------------------------------------------------------

    def _apply(self, obj: Mapping[str, Any], *, subresource: str | None, dry_run: bool,
               field_manager: str) -> Manifest:
        kind = resource_type(obj)
        meta = obj["metadata"]
        namespace = meta.get("namespace") if kind.namespaced else None
        query = [("fieldManager", field_manager), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self._request(
            "PATCH",
            kind.path(namespace=namespace, name=meta["name"], subresource=subresource),
            query=query,
            # JSON is YAML, and the client sends a string body as it is.
            body=json.dumps(obj),
            content_type=APPLY_CONTENT_TYPE,
            action="apply" if subresource is None else f"apply {subresource} of",
            what=_describe(kind, namespace, meta["name"]),
        )

    def _request(self, method: str, path: str, *, action: str, what: str, query: Sequence[tuple[str, str]] = (),
                 body: Any = None, content_type: str | None = None,
                 timeout: float = READ_TIMEOUT) -> Manifest:
        data = self._send(method, path, action=action, what=what, query=query, body=body,
                          content_type=content_type, timeout=timeout)
        return json.loads(data) if data else {}

    def _send(self, method: str, path: str, *, action: str, what: str, query: Sequence[tuple[str, str]] = (),
              body: Any = None, content_type: str | None = None, accept: str = "application/json",
              timeout: float = READ_TIMEOUT) -> bytes:
        """The answer's body; ``kube.errors`` for trouble and for any status but 2xx."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            method, url, headers, body, _ = self.api.param_serialize(
                method, path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            response = self.api.call_api(method, url, header_params=headers, body=body,
                                         _request_timeout=(CONNECT_TIMEOUT, timeout))
            data = response.read()
        except ApiException as err:
            # The client raises only for transport trouble here (TLS), never for an HTTP status.
            raise errors.Unavailable(f"could not {action} {what}: {err.reason}", what=what) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise errors.Unavailable(f"could not {action} {what}: apiserver unreachable ({err})", what=what) from err
        if not 200 <= response.status <= 299:
            raise errors.from_response(status=response.status, body=data, action=action, what=what)
        return data


def load_api_client(*, kubeconfig: str | None) -> client.ApiClient:
    """An ApiClient from ``kubeconfig``, else the pod's ServiceAccount, else ``$KUBECONFIG`` / ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _describe(kind: ResourceType, namespace: str | None, name: str) -> str:
    return f"{kind.kind} {namespace}/{name}" if kind.namespaced and namespace else f"{kind.kind} {name}"
