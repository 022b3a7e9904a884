"""Kopf admission handlers of residency, and the webhook server they are served from.

``install(registry, kube=..., config=...)`` registers, on one Kopf registry:

- at startup, ``settings.admission.server``: a ``ResidencyWebhookServer`` (Kopf's HTTPS server,
  with a mounted certificate or a self-signed one) that, each time it starts listening, applies
  the operator's own webhook configurations pointed at itself (``services.admission.publish_webhooks``).
  Kopf's managed mode is not used: it cannot scope webhooks to governed namespaces and it
  removes them on exit, where a security control must keep failing closed;
- one handler per webhook of ``services.admission.WEBHOOKS``, under the webhook's id (the URL
  path Kopf routes by): parse nothing, call the service, deny with its message, or admit with a
  warning in Audit mode. A handler that fails refuses the request (fail closed) and counts in
  ``sovereign_webhook_errors_total``; every answer is timed in ``sovereign_webhook_duration_seconds``.

The handlers read the indexes of ``handlers.residency``, which must be installed on the same
registry. Called by ``cli.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from sovereign.api import GROUP, PLURAL, VERSION
from sovereign.handlers.residency import governance
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


class ResidencyWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server that keeps the cluster's webhook configurations pointed at itself."""

    def __init__(self, *, kube: Kube, config: AdmissionConfig) -> None:
        service_ref = config.service_ref
        sans = [f"{service_ref['name']}.{service_ref['namespace']}.svc"] if service_ref else []
        super().__init__(addr=config.listen_address, port=config.port, host=config.host,
                         certfile=config.cert_file, pkeyfile=config.key_file, cafile=config.ca_bundle_file,
                         extra_sans=sans)
        self._kube = kube
        self._service_ref = service_ref

    @staticmethod
    def build_certificate(hostnames: Collection[str], password: str | None = None) -> tuple[bytes, bytes]:
        # Kopf's generator needs certbuilder/oscrypto; ``cryptography`` is already a dependency.
        return self_signed_certificate(list(hostnames))

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for client_config in super().__call__(fn):
            published: dict[str, Any] = dict(client_config)
            if self._service_ref is not None:
                published = {"service": self._service_ref, "caBundle": client_config.get("caBundle")}
            await asyncio.to_thread(service.publish_webhooks, kube=self._kube, client_config=published)
            log.info("residency webhooks published for %s", published.get("url") or published["service"])
            yield client_config


@contextlib.contextmanager
def _served(webhook: str) -> Iterator[None]:
    """Time an answer; turn an unexpected failure into a refusal that says so."""
    with WEBHOOK_DURATION.labels(webhook).time():
        try:
            yield
        except kopf.AdmissionError:
            raise
        except Exception as err:
            WEBHOOK_ERRORS.labels(webhook).inc()
            log.exception("residency webhook %s failed", webhook)
            raise kopf.AdmissionError(f"the residency webhook {webhook} failed, so the request is refused until it "
                                      f"works again: {err}", code=500) from err


def _answer(review: Review, warnings: list[str]) -> None:
    if not review.allowed:
        raise kopf.AdmissionError(review.decision.message, code=403)
    if review.audited:
        warnings.append(f"admitted in Audit mode, recorded as a residency violation: {review.decision.message}")


def install(registry: kopf.OperatorRegistry, *, kube: Kube, config: AdmissionConfig) -> None:
    """Register the webhook server and the residency webhooks on ``registry``."""

    @kopf.on.startup(id="residency-admission", registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = ResidencyWebhookServer(kube=kube, config=config)
        settings.admission.managed = None

    @kopf.on.mutate("", "v1", "pods", id=service.POD_AFFINITY.id, operations=["CREATE"], registry=registry)
    def pin_pod(body: kopf.Body, patch: kopf.Patch, residency_stacks: kopf.Index, residency_nodes: kopf.Index,
                residency_storage_classes: kopf.Index, **_: Any) -> None:
        with _served(service.POD_AFFINITY.id):
            affinity = service.region_affinity(
                pod=body, governance=governance(residency_stacks, residency_nodes, residency_storage_classes),
                kube=kube)
        if affinity is not None:
            patch.spec["affinity"] = affinity

    @kopf.on.validate("", "v1", "pods", id=service.POD_RESIDENCY.id, operations=["CREATE", "UPDATE"],
                      registry=registry)
    def judge_pod(body: kopf.Body, old: kopf.Body | None, warnings: list[str], residency_stacks: kopf.Index,
                  residency_nodes: kopf.Index, residency_storage_classes: kopf.Index, **_: Any) -> None:
        with _served(service.POD_RESIDENCY.id):
            review = service.review_pod(
                pod=body, old=old, governance=governance(residency_stacks, residency_nodes, residency_storage_classes),
                kube=kube)
        _answer(review, warnings)

    @kopf.on.validate("", "v1", "persistentvolumeclaims", id=service.CLAIM_RESIDENCY.id, operations=["CREATE"],
                      registry=registry)
    def judge_claim(body: kopf.Body, warnings: list[str], residency_stacks: kopf.Index, residency_nodes: kopf.Index,
                    residency_storage_classes: kopf.Index, **_: Any) -> None:
        with _served(service.CLAIM_RESIDENCY.id):
            review = service.review_claim(
                claim=body, governance=governance(residency_stacks, residency_nodes, residency_storage_classes),
                kube=kube)
        _answer(review, warnings)

    @kopf.on.validate("", "v1", "services", id=service.SERVICE_EXPOSURE.id, operations=["CREATE", "UPDATE"],
                      registry=registry)
    def judge_service(body: kopf.Body, old: kopf.Body | None, warnings: list[str], residency_stacks: kopf.Index,
                      residency_nodes: kopf.Index, residency_storage_classes: kopf.Index, **_: Any) -> None:
        with _served(service.SERVICE_EXPOSURE.id):
            review = service.review_service(
                service=body, old=old,
                governance=governance(residency_stacks, residency_nodes, residency_storage_classes), kube=kube)
        _answer(review, warnings)

    @kopf.on.validate(GROUP, VERSION, PLURAL, id=service.STACK_RESIDENCY.id, operations=["CREATE", "UPDATE"],
                      registry=registry)
    def judge_stack(body: kopf.Body, old: kopf.Body | None, warnings: list[str], residency_stacks: kopf.Index,
                    residency_nodes: kopf.Index, residency_storage_classes: kopf.Index, **_: Any) -> None:
        with _served(service.STACK_RESIDENCY.id):
            review = service.review_stack(
                body=body, old=old, governance=governance(residency_stacks, residency_nodes, residency_storage_classes))
        _answer(review, warnings)
