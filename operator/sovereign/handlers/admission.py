"""The residency admission set-up of the operator, and the lean webhook server for lookups.

``install(registry, kube=..., config=...)`` registers, on one Kopf registry:

- at startup: a ``LookupWebhookServer`` on its own threads (one per request, HTTPS with a mounted
  certificate or a self-signed one), never on Kopf's executor, so a reconcile pass or a slow S3
  check cannot keep an admission review waiting; then ``services.admission.install_admission``:
  the residency policies and bindings (evaluated by the apiserver itself; the operator's user
  name, from a SelfSubjectReview, is the one allowed to change governance) and the webhook
  configuration pointed at the server. Nothing is removed on exit: the policies keep enforcing
  and the lookups keep failing closed while the operator is away;
- at cleanup: the server stops.

The server answers the webhooks of ``services.admission.WEBHOOKS`` by URL path: deny with the
service's message, or admit with a warning in Audit mode. A review that fails is refused (fail
closed) and counted in ``sovereign_webhook_errors_total``; every answer is timed in
``sovereign_webhook_duration_seconds``. Called by ``cli.run``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf

from sovereign.kube.admission import self_signed_certificate
from sovereign.kube.client import Kube
from sovereign.metrics import WEBHOOK_DURATION, WEBHOOK_ERRORS
from sovereign.services import admission as service
from sovereign.services.admission import Review

log = logging.getLogger(__name__)

DEFAULT_PORT = 9443
DEFAULT_SERVICE_PORT = 443


@dataclass(frozen=True)
class AdmissionConfig:
    """Where the webhook server listens and how the apiserver reaches it (``sovereign run`` options).

    ``host``: the name or address the apiserver calls (default: the listen address, or
    ``localhost`` when that is every interface). ``service``: ``<namespace>/<name>[:<port>]`` of
    the operator's Service; the configurations then name the Service instead of a URL and the
    certificate covers ``<name>.<namespace>.svc``. ``cert_file``/``key_file``: a mounted serving
    certificate (cert-manager); without them a self-signed one is made at each start.
    ``ca_file``: the CA the apiserver is to trust; default the ``ca.crt`` beside ``cert_file``
    (cert-manager writes it there), else the certificate itself.
    """

    listen_address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    host: str | None = None
    service: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None

    @property
    def ca_bundle_file(self) -> str | None:
        if self.ca_file or not self.cert_file:
            return self.ca_file
        beside = Path(self.cert_file).with_name("ca.crt")
        return str(beside) if beside.is_file() else None

    @property
    def service_ref(self) -> dict[str, Any] | None:
        if not self.service:
            return None
        where, _, port = self.service.partition(":")
        namespace, _, name = where.partition("/")
        if not namespace or not name:
            raise ValueError(f"webhook service {self.service!r} must be <namespace>/<name>[:<port>]")
        return {"namespace": namespace, "name": name, "port": int(port or DEFAULT_SERVICE_PORT)}


Reviewer = Callable[[Mapping[str, Any]], Review]


class LookupWebhookServer:
    """HTTPS server of the lookup webhooks, on threads of its own (``ThreadingHTTPServer``)."""

    def __init__(self, *, kube: Kube, config: AdmissionConfig) -> None:
        self._config = config
        service_ref = config.service_ref
        host = config.host or ("localhost" if config.listen_address in ("0.0.0.0", "::") else config.listen_address)
        self._service_ref = service_ref
        self._host = host
        names = [f"{service_ref['name']}.{service_ref['namespace']}.svc"] if service_ref else [host]
        if config.cert_file and config.key_file:
            self._cert_file, self._key_file = config.cert_file, config.key_file
            ca = Path(config.ca_bundle_file or config.cert_file).read_bytes()
        else:
            certificate, key = self_signed_certificate(names)
            self._tmp = tempfile.TemporaryDirectory(prefix="sovereign-webhook-")
            self._cert_file, self._key_file = f"{self._tmp.name}/tls.crt", f"{self._tmp.name}/tls.key"
            Path(self._cert_file).write_bytes(certificate)
            Path(self._key_file).write_bytes(key)
            ca = certificate
        self._ca_bundle = base64.b64encode(ca).decode()
        self._reviewers: dict[str, Reviewer] = {
            service.POD_NODE.id: lambda request: service.review_pod_node(pod=request["object"], kube=kube),
            service.POD_BINDING.id: lambda request: service.review_binding(binding=request["object"], kube=kube),
            service.CLAIM_RESIDENCY.id: lambda request: service.review_claim(claim=request["object"], kube=kube),
            service.STACK_RESIDENCY.id: lambda request: service.review_stack(
                body=request["object"], old=request.get("oldObject"), kube=kube),
        }
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def client_config(self) -> dict[str, Any]:
        """How the apiserver reaches the server: the Service, or the URL of host and port."""
        if self._service_ref is not None:
            return {"service": self._service_ref, "caBundle": self._ca_bundle}
        host = self._host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return {"url": f"https://{host}:{self.port}", "caBundle": self._ca_bundle}

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return self._server.server_address[1]

    def start(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_file, self._key_file)
        reviewers = self._reviewers

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive: the apiserver reuses its connection instead of a TLS handshake per review.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                hook = self.path.strip("/").split("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                answer = _answer(hook, reviewers.get(hook), self.rfile.read(length))
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("webhook %s", format % args)

        server = ThreadingHTTPServer((self._config.listen_address, self._config.port), Handler)
        server.daemon_threads = True
        # The handshake happens on the request's own thread, so a slow client never holds the accept loop.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="residency-webhooks", daemon=True)
        self._thread.start()
        log.info("residency lookup webhooks listening on %s:%d", self._config.listen_address, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _answer(hook: str, reviewer: Reviewer | None, raw: bytes) -> dict[str, Any]:
    """The AdmissionReview answer to one request; any failure refuses it (fail closed)."""
    uid = ""
    with WEBHOOK_DURATION.labels(hook).time():
        try:
            request = json.loads(raw)["request"]
            uid = request["uid"]
            if reviewer is None:
                raise LookupError(f"no residency webhook is served at /{hook}")
            review = reviewer(request)
            response: dict[str, Any] = {"uid": uid, "allowed": review.allowed}
            if not review.allowed:
                response["status"] = {"code": 403, "reason": "Forbidden", "message": review.decision.message}
            elif review.audited:
                response["warnings"] = [f"admitted in Audit mode, recorded as a residency violation: "
                                        f"{review.decision.message}"]
        except Exception as err:
            WEBHOOK_ERRORS.labels(hook).inc()
            log.exception("residency webhook %s failed", hook)
            response = {"uid": uid, "allowed": False, "status": {
                "code": 500, "message": f"the residency webhook {hook} failed, so the request is refused until it "
                                        f"works again: {err}"}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def install(registry: kopf.OperatorRegistry, *, kube: Kube, config: AdmissionConfig) -> None:
    """Register the lookup server's start (with the policies and configuration) and stop on ``registry``."""
    server = LookupWebhookServer(kube=kube, config=config)

    @kopf.on.startup(id="residency-admission", registry=registry)
    async def start(**_: Any) -> None:
        server.start()
        users = [await asyncio.to_thread(kube.username)]
        await asyncio.to_thread(service.install_admission, kube=kube, client_config=server.client_config,
                                operator_users=users)
        log.info("residency policies applied (governance by %s); lookup webhooks published for %s",
                 users[0], server.client_config.get("url") or server.client_config["service"])

    @kopf.on.cleanup(id="residency-admission-stop", registry=registry)
    def stop(**_: Any) -> None:
        server.stop()
