"""Kubernetes I/O of residency enforcement: webhook configurations, governed namespaces, audit status.

- ``webhook_configurations`` builds the operator's ``MutatingWebhookConfiguration`` and
  ``ValidatingWebhookConfiguration`` (both named ``sovereign-residency``) from the webhooks
  ``services.admission`` declares and the client config Kopf's webhook server yields (URL or
  in-cluster Service, CA bundle); ``apply_webhook_configurations`` server-side applies them as
  field manager ``sovereign-admission``. Webhooks on workloads only match namespaces labelled
  ``sovereign.ai/governed=true`` and fail closed there; the configurations are never deleted by
  the operator, so they keep failing closed while it is down (docs/residency.md says what an
  admin does then).
- ``set_governed`` puts that label on a namespace that holds a stack and takes it off when the
  last one is gone (a JSON merge patch, only when the label is not already as wanted).
- ``read_webhook_configurations``: both configurations as the cluster has them (the report).
- ``apply_stack_status``: the residency audit's own server-side apply of a stack's status.
- ``self_signed_certificate``: the webhook server's certificate when none is mounted, made with
  ``cryptography`` (Kopf's own generator needs ``certbuilder``/``oscrypto``, which this image
  does not ship).

Called by ``services.admission``, ``services.residency_audit`` and ``handlers.admission``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sovereign.api import GROUP, KIND, PLURAL, VERSION
from sovereign.kube import errors
from sovereign.kube.client import APPLY_CONTENT_TYPE, Kube
from sovereign.kube.resources import ResourceType

#: Label of namespaces whose workloads the residency webhooks judge.
GOVERNED_LABEL = "sovereign.ai/governed"
#: Name of both webhook configurations.
CONFIGURATION_NAME = "sovereign-residency"
#: Field manager of the configurations (the reconciler's is ``sovereign-operator``).
FIELD_MANAGER = "sovereign-admission"
#: The apiserver waits at most this long for an answer (its maximum is 30 seconds).
TIMEOUT_SECONDS = 10
ADMISSION_API = "admissionregistration.k8s.io/v1"

NAMESPACE = ResourceType("v1", "Namespace", "namespaces", False)
PERSISTENT_VOLUME = ResourceType("v1", "PersistentVolume", "persistentvolumes", False)
STORAGE_CLASS = ResourceType("storage.k8s.io/v1", "StorageClass", "storageclasses", False)
MUTATING_CONFIGURATION = ResourceType(ADMISSION_API, "MutatingWebhookConfiguration",
                                      "mutatingwebhookconfigurations", False)
VALIDATING_CONFIGURATION = ResourceType(ADMISSION_API, "ValidatingWebhookConfiguration",
                                        "validatingwebhookconfigurations", False)

_CERTIFICATE_VALIDITY = dt.timedelta(days=365)

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Webhook:
    """One admission webhook: the Kopf handler ``id`` that serves it and what it matches."""

    id: str
    mutating: bool
    group: str
    version: str
    plural: str
    operations: tuple[str, ...]
    #: Only namespaces labelled governed (and fail closed there); else every namespace, failing open.
    governed_only: bool = True

    @property
    def name(self) -> str:
        """The webhook's name in its configuration: a qualified name, as the API requires."""
        return f"{self.id}.sovereign.ai"


def webhook_configurations(*, webhooks: Sequence[Webhook], client_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mutating and the validating configuration for ``webhooks``, in that order.

    ``client_config`` is what Kopf's server yields: ``url`` (or ``service``) and ``caBundle``;
    each webhook's handler id is appended to the path, which is how Kopf routes a review to
    its handler.
    """
    configurations = []
    for mutating, kind in ((True, "MutatingWebhookConfiguration"), (False, "ValidatingWebhookConfiguration")):
        entries = [_webhook_entry(hook, client_config) for hook in webhooks if hook.mutating == mutating]
        configurations.append({
            "apiVersion": ADMISSION_API,
            "kind": kind,
            "metadata": {"name": CONFIGURATION_NAME, "labels": {"app.kubernetes.io/managed-by": "sovereign-operator"}},
            "webhooks": entries,
        })
    return configurations


def _webhook_entry(hook: Webhook, client_config: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": hook.name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": _routed(client_config, hook.id),
        "rules": [{"apiGroups": [hook.group], "apiVersions": [hook.version], "resources": [hook.plural],
                   "operations": list(hook.operations), "scope": "Namespaced"}],
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
    }
    if hook.governed_only:
        # A security control fails closed where it governs. Nothing outside a governed namespace
        # is ever sent here, so an operator outage cannot block the rest of the cluster.
        entry["namespaceSelector"] = {"matchLabels": {GOVERNED_LABEL: "true"}}
        entry["failurePolicy"] = "Fail"
    else:
        entry["namespaceSelector"] = {}
        entry["failurePolicy"] = "Ignore"
    if hook.mutating:
        # Another mutating webhook may rewrite the affinity after ours; run again if it does.
        entry["reinvocationPolicy"] = "IfNeeded"
    return entry


def _routed(client_config: Mapping[str, Any], handler_id: str) -> dict[str, Any]:
    routed: dict[str, Any] = {key: value for key, value in client_config.items() if key in ("url", "caBundle")}
    if "url" in routed:
        routed["url"] = f"{routed['url'].rstrip('/')}/{handler_id}"
    if "service" in client_config:
        service = dict(client_config["service"])
        service["path"] = f"{service.get('path', '').rstrip('/')}/{handler_id}"
        routed["service"] = service
    return routed


def apply_webhook_configurations(kube: Kube, configurations: Sequence[Mapping[str, Any]]) -> None:
    """Server-side apply both configurations as ``sovereign-admission``.

    Through the kubernetes client's typed calls, because ``Kube.apply`` applies as the
    reconciler's field manager, and neither these objects nor the audit's status are the
    reconciler's.
    """
    api = client.AdmissionregistrationV1Api(kube.api)
    for configuration in configurations:
        patch = (api.patch_mutating_webhook_configuration if configuration["kind"] == "MutatingWebhookConfiguration"
                 else api.patch_validating_webhook_configuration)
        with _translated("apply", f"{configuration['kind']} {CONFIGURATION_NAME}"):
            patch(CONFIGURATION_NAME, configuration, field_manager=FIELD_MANAGER, force=True,
                  _content_type=APPLY_CONTENT_TYPE)


def apply_stack_status(kube: Kube, obj: Mapping[str, Any], *, field_manager: str) -> None:
    """Server-side apply the status of the SovereignStack ``obj`` under ``field_manager``.

    For the residency audit, which shares the status with the reconciler and owns only its own
    fields of it (``violations``, ``violationCount`` and the ``ResidencyCompliant`` condition).
    """
    meta = obj["metadata"]
    with _translated("apply status of", f"{KIND} {meta['namespace']}/{meta['name']}"):
        client.CustomObjectsApi(kube.api).patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], dict(obj), field_manager=field_manager,
            force=True, _content_type=APPLY_CONTENT_TYPE)


@contextlib.contextmanager
def _translated(action: str, what: str) -> Iterator[None]:
    """The client library's errors as ``kube.errors``."""
    try:
        yield
    except ApiException as err:
        if not err.status:
            raise errors.Unavailable(f"could not {action} {what}: {err.reason}", what=what) from err
        raise errors.from_response(status=err.status, body=err.body, action=action, what=what) from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise errors.Unavailable(f"could not {action} {what}: apiserver unreachable ({err})", what=what) from err


def read_webhook_configurations(kube: Kube) -> list[Manifest]:
    """The operator's webhook configurations as the cluster has them (absent ones left out)."""
    found = [kube.get(kind, name=CONFIGURATION_NAME) for kind in (MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION)]
    return [configuration for configuration in found if configuration is not None]


def set_governed(kube: Kube, *, namespace: str, governed: bool) -> bool:
    """Label ``namespace`` governed (or not); True when it changed, False when it already was
    as wanted or the namespace is gone."""
    current = kube.get(NAMESPACE, name=namespace)
    if current is None:
        return False
    labelled = ((current["metadata"].get("labels") or {}).get(GOVERNED_LABEL) == "true")
    if labelled == governed:
        return False
    try:
        kube.merge_patch(NAMESPACE, name=namespace,
                         patch={"metadata": {"labels": {GOVERNED_LABEL: "true" if governed else None}}})
    except errors.NotFound:
        return False
    return True


def self_signed_certificate(hostnames: Sequence[str]) -> tuple[bytes, bytes]:
    """A serving certificate for ``hostnames`` (DNS names or IP addresses), signed by its own key,
    and that key: (certificate PEM, private key PEM). The certificate is its own CA bundle."""
    names = [name for name in dict.fromkeys(hostnames) if name]
    if not names:
        raise ValueError("a webhook certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _CERTIFICATE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
