"""Kubernetes I/O of residency enforcement: admission policies, the lookup webhook, governed namespaces.

- ``apply_admission_policies`` server-side applies the residency admission policies and their
  bindings (``policy.residency_admission``) as field manager ``sovereign-admission``;
  ``read_admission_policies`` reads them back (the report).
- ``webhook_configuration`` builds the operator's ``ValidatingWebhookConfiguration``
  ``sovereign-residency``: only the checks that need a lookup (the node a pod names or is bound
  to, the class or volume of a claim, a stack's classes and nodes), narrowed by CEL
  ``matchConditions`` so the apiserver calls the operator only when there is something to look up;
  ``apply_webhook_configuration`` applies it and deletes the mutating configuration of earlier
  versions (their region affinity is a policy now). Webhooks on workloads only match namespaces
  labelled ``sovereign.ai/governed=true`` and fail closed there; the configuration is never
  deleted by the operator, so lookups keep failing closed while it is down (docs/residency.md).
- ``set_namespace_metadata`` keeps a namespace's residency parameters (annotations) and its
  ``sovereign.ai/governed`` and ``sovereign.ai/enforcement`` labels as wanted, in one write and
  only when something differs.
- ``read_webhook_configurations``: the configurations as the cluster has them (the report).
- ``apply_stack_status``: the residency audit's own server-side apply of a stack's status.
- ``self_signed_certificate``: the webhook server's certificate when none is mounted, made with
  ``cryptography``.

Called by ``services.admission``, ``services.residency_audit``, ``services.residency_report`` and
``handlers.admission``.
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
from sovereign.kube.resources import (
    MUTATING_POLICY,
    MUTATING_POLICY_BINDING,
    VALIDATING_POLICY,
    VALIDATING_POLICY_BINDING,
    ResourceType,
)
from sovereign.render.names import GOVERNED_LABEL

#: Name of the webhook configuration (and of the mutating one earlier versions made).
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
    group: str
    version: str
    #: The resource, or ``<resource>/<subresource>`` (``pods/binding``).
    plural: str
    operations: tuple[str, ...]
    #: Only namespaces labelled governed (and fail closed there); else every namespace, failing open.
    governed_only: bool = True
    #: CEL ``(name, expression)`` pairs: the apiserver calls the webhook only when all are true.
    match_conditions: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The webhook's name in its configuration: a qualified name, as the API requires."""
        return f"{self.id}.sovereign.ai"


def webhook_configuration(*, webhooks: Sequence[Webhook], client_config: Mapping[str, Any]) -> dict[str, Any]:
    """The validating configuration for ``webhooks``.

    ``client_config`` is where the lookup server listens: ``url`` (or ``service``) and
    ``caBundle``; each webhook's id is appended to the path, which is how the server routes a review.
    """
    return {
        "apiVersion": ADMISSION_API,
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME, "labels": {"app.kubernetes.io/managed-by": "sovereign-operator"}},
        "webhooks": [_webhook_entry(hook, client_config) for hook in webhooks],
    }


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
    if hook.match_conditions:
        entry["matchConditions"] = [{"name": name, "expression": expression}
                                    for name, expression in hook.match_conditions]
    if hook.governed_only:
        # A security control fails closed where it governs. Nothing outside a governed namespace
        # is ever sent here, so an operator outage cannot block the rest of the cluster.
        entry["namespaceSelector"] = {"matchLabels": {GOVERNED_LABEL: "true"}}
        entry["failurePolicy"] = "Fail"
    else:
        entry["namespaceSelector"] = {}
        entry["failurePolicy"] = "Ignore"
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


def apply_webhook_configuration(kube: Kube, configuration: Mapping[str, Any]) -> None:
    """Server-side apply the validating configuration as ``sovereign-admission``, and delete the
    mutating configuration of earlier versions (its webhook would be called for every pod).

    Through the kubernetes client's typed calls, because ``Kube.apply`` knows only the kinds the
    operator renders.
    """
    api = client.AdmissionregistrationV1Api(kube.api)
    with _translated("apply", f"ValidatingWebhookConfiguration {CONFIGURATION_NAME}"):
        api.patch_validating_webhook_configuration(CONFIGURATION_NAME, dict(configuration), field_manager=FIELD_MANAGER,
                                                   force=True, _content_type=APPLY_CONTENT_TYPE)
    with _translated("delete", f"MutatingWebhookConfiguration {CONFIGURATION_NAME}"):
        with contextlib.suppress(ApiException):
            api.read_mutating_webhook_configuration(CONFIGURATION_NAME)
            api.delete_mutating_webhook_configuration(CONFIGURATION_NAME)


_POLICY_KINDS = (MUTATING_POLICY, VALIDATING_POLICY, MUTATING_POLICY_BINDING, VALIDATING_POLICY_BINDING)


def apply_admission_policies(kube: Kube, objects: Sequence[Mapping[str, Any]]) -> None:
    """Server-side apply the residency policies and bindings, in order, as ``sovereign-admission``."""
    for obj in objects:
        kube.apply(obj, field_manager=FIELD_MANAGER)


def read_admission_policies(kube: Kube, *, selector: str) -> list[Manifest]:
    """Policies and bindings labelled ``selector``, as the cluster has them: policies first."""
    return [obj for kind in _POLICY_KINDS for obj in kube.list(kind, selector=selector)]


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


def set_namespace_metadata(kube: Kube, *, namespace: str, metadata: Mapping[str, Mapping[str, str | None]]) -> bool:
    """Bring the operator's labels and annotations of ``namespace`` to ``metadata``
    (``{"labels": ..., "annotations": ...}``, None values: absent) in one JSON merge patch, so the
    admission policies never see labels without their parameters. True when it wrote, False when
    all was already as wanted or the namespace is gone."""
    current = kube.get(NAMESPACE, name=namespace)
    if current is None:
        return False
    stale = any((current["metadata"].get(part) or {}).get(key) != value
                for part, wanted in metadata.items() for key, value in wanted.items())
    if not stale:
        return False
    try:
        kube.merge_patch(NAMESPACE, name=namespace, patch={"metadata": {part: dict(wanted)
                                                                        for part, wanted in metadata.items()}})
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
