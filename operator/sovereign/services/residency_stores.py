"""Verify a stack's S3 stores before anything uses them: one ``StoreVerdict`` per store.

For each S3 data store: read its credentials from the Secret it names, optionally create the
bucket in its region (``s3.create``, only for the reconciler), then run every residency check of
``services.store_check`` (exists, location in the allowed regions, default encryption,
versioning, public access, replication). The verdict says which check failed, in words that
never contain the credentials (``stores`` errors name endpoint and bucket only; ``Credentials``
redacts itself).

The hook for the reconciler (``services.reconcile``), once per pass before rendering:

    verdicts = verify_data_stores(kube=kube, stack=stack, create=True)
    statuses = [v.status for v in verdicts]           # -> status.dataStores (S3 entries)
    failed = {v.name: v.decision for v in verdicts if not v.ok}
    blocked = policy.residency.blocked_workloads(stack=stack, failed_stores=failed)
    # render: replicas 0 for every Deployment named in ``blocked``; DataStoresReady False with
    # the first failed verdict's reason and every failed verdict's message.

The residency audit calls it with ``create=False`` and records failures as violations.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from sovereign.api import DataStoreStatus, SovereignStack
from sovereign.kube.client import Kube
from sovereign.kube.resources import SECRET
from sovereign.policy.residency_store import Decision
from sovereign.services.store_check import check_store
from sovereign.stores.credentials import Credentials
from sovereign.stores.errors import StoreError
from sovereign.stores.s3 import S3Store

CREDENTIALS_SECRET_MISSING = "CredentialsSecretMissing"
CREDENTIALS_INVALID = "CredentialsInvalid"
BUCKET_CREATED = "BucketCreated"


@dataclass(frozen=True)
class StoreVerdict:
    """The outcome of verifying one S3 data store."""

    name: str
    bucket: str
    #: Where the bucket was found to be; empty when it could not be read.
    region: str
    decision: Decision
    #: Every check that ran, by check name (``policy.residency_store``), in order.
    checks: dict[str, Decision] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.decision.ok

    @property
    def status(self) -> DataStoreStatus:
        """The store's entry of ``status.dataStores``."""
        return DataStoreStatus(name=self.name, ready=self.ok, location=f"s3://{self.bucket}", region=self.region,
                               reason=self.decision.reason, message=self.decision.message)


def verify_data_stores(*, kube: Kube, stack: SovereignStack, create: bool) -> list[StoreVerdict]:
    """A verdict for every S3 store of ``stack``, in spec order. ``create``: make missing
    buckets whose store says ``s3.create`` (the reconciler; the audit only looks)."""
    namespace = stack.metadata.namespace or ""
    regions = list(stack.spec.residency.regions)
    verdicts = []
    for entry in stack.spec.data_stores:
        s3 = entry.s3
        if s3 is None:
            continue
        credentials = _credentials(kube, namespace, s3.credentials_secret_ref.name) if s3.credentials_secret_ref else None
        if isinstance(credentials, Decision):
            verdicts.append(StoreVerdict(name=entry.name, bucket=s3.bucket, region="", decision=credentials))
            continue
        store = S3Store(endpoint=s3.endpoint, region=s3.region, credentials=credentials,
                        path_style=s3.force_path_style)
        try:
            check = check_store(store=store, bucket=s3.bucket, allowed_regions=regions)
            created = False
            if not check.readings.exists and create and s3.create:
                store.create_bucket(bucket=s3.bucket, region=s3.region, encryption=True, versioning=False)
                created = True
                check = check_store(store=store, bucket=s3.bucket, allowed_regions=regions)
        except StoreError as err:
            verdicts.append(StoreVerdict(name=entry.name, bucket=s3.bucket, region="",
                                         decision=Decision(False, type(err).__name__, str(err))))
            continue
        summary = check.summary
        if created and summary.ok:
            summary = Decision(True, BUCKET_CREATED, f"created in {s3.region}; {summary.message}")
        verdicts.append(StoreVerdict(name=entry.name, bucket=s3.bucket, region=check.readings.location or "",
                                     decision=summary, checks=dict(check.results)))
    return verdicts


def _credentials(kube: Kube, namespace: str, secret_name: str) -> Credentials | Decision:
    """The access keys in the Secret, or the reason they cannot be had (values never shown)."""
    source = f"Secret {namespace}/{secret_name}"
    secret = kube.get(SECRET, name=secret_name, namespace=namespace)
    if secret is None:
        return Decision(False, CREDENTIALS_SECRET_MISSING, f"{source} does not exist: create it with the keys "
                                                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    try:
        values = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
    except (binascii.Error, UnicodeDecodeError):
        return Decision(False, CREDENTIALS_INVALID, f"{source} holds a value that is not base64-encoded text")
    try:
        credentials = Credentials.from_mapping(values, source=source)
    except StoreError as err:
        return Decision(False, CREDENTIALS_INVALID, str(err))
    assert credentials is not None  # required=True raises instead of returning None
    return credentials
