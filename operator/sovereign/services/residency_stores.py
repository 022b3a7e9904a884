"""Verify a stack's S3 stores before anything uses them: one ``StoreVerdict`` per store.

For each S3 data store: read its credentials from the Secret it names, optionally create the
bucket in its region (``s3.create``, only for the reconciler), then run every residency check of
``services.store_check`` (exists, location in the allowed regions, default encryption,
versioning, public access, replication). The verdict says which check failed, in words that
never contain the credentials (``stores`` errors name endpoint and bucket only; ``Credentials``
redacts itself).

The reconciler (``services.reconcile``) asks ``StoreVerdicts`` once per pass, before rendering:
it verifies (with ``create=True``, and looking at the GGUF file of every llama-cpp model, which
a missing or non-GGUF file holds back, and at the prefix of every model vLLM streams, which holds
it back without safetensors) when the stack's spec or a credentials Secret changed or a
re-check period has passed, and otherwise gives the verdicts of the last verification, so passes
that events trigger cost no S3 requests. The verdicts' ``status`` entries become the S3 entries
of ``status.dataStores``; the failed ones hold back the workloads that use them
(``policy.residency.blocked_workloads``). The residency audit calls ``verify_data_stores`` with
``create=False`` every audit period and records failures as violations.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from dataclasses import dataclass, field

from sovereign.api import DataStoreStatus, Engine, LoadFormat, SovereignStack
from sovereign.kube.client import Kube
from sovereign.kube.resources import SECRET
from sovereign.policy.residency_store import CREDENTIALS_INVALID, CREDENTIALS_SECRET_MISSING, Decision
from sovereign.policy.model_source import check_gguf, check_safetensors
from sovereign.services.store_check import check_store, probe_object
from sovereign.stores.credentials import Credentials
from sovereign.stores.errors import StoreError, StoreUnreachable
from sovereign.stores.s3 import S3Store

log = logging.getLogger(__name__)

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
    #: What the bucket holds at the ``source.path`` of each llama-cpp model copied from it, by
    #: model name (``policy.model_source``); only looked at once the store passes its checks.
    models: dict[str, Decision] = field(default_factory=dict)
    #: The size in bytes of each such model file that exists, by model name: the weights' size
    #: the rendered copy and startup windows are derived from (``render.deadlines``).

    @property
    def ok(self) -> bool:
        return self.decision.ok

    @property
    def status(self) -> DataStoreStatus:
        """The store's entry of ``status.dataStores``."""
        return DataStoreStatus(name=self.name, ready=self.ok, location=f"s3://{self.bucket}", region=self.region,
                               reason=self.decision.reason, message=self.decision.message)


def verify_data_stores(*, kube: Kube, stack: SovereignStack, create: bool,
                       check_models: bool = False) -> list[StoreVerdict]:
    """A verdict for every S3 store of ``stack``, in spec order. ``create``: make missing
    buckets whose store says ``s3.create`` (the reconciler; the audit only looks).
    ``check_models``: also look at the GGUF file of each llama-cpp model the store serves (the
    reconciler, which holds such a model back; residency is not at stake, so the audit does not)."""
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
        location = check.readings.location or ""
        models: dict[str, Decision] = {}
        if check_models and summary.ok:
            models = _model_files(stack, entry.name,
                                         store if location == store.region else store.with_region(location), s3.bucket)
        verdicts.append(StoreVerdict(name=entry.name, bucket=s3.bucket, region=location,
                                     decision=summary, checks=dict(check.results), models=models))
    return verdicts


def _model_files(stack: SovereignStack, store_name: str, store: S3Store,
                 bucket: str) -> dict[str, Decision]:
    """The decision on the GGUF file of each llama-cpp model copied from ``store_name`` and on
    the prefix of each model streamed from it."""
    decisions = {}
    for index, model in enumerate(stack.spec.models):
        if model.source.data_store != store_name:
            continue
        field = f"spec.models[{index}].source.path"
        if model.load_format is LoadFormat.RUNAI_STREAMER:
            decisions[model.name] = _streamed_model(store, bucket, model.source.path, field)
            continue
        if model.engine is not Engine.LLAMA_CPP:
            continue
        try:
            probe = probe_object(store=store, bucket=bucket, key=model.source.path)
        except StoreError as err:
            decisions[model.name] = Decision(False, type(err).__name__, f"{field}: cannot read it: {err}")
            continue
        decisions[model.name] = check_gguf(probe=probe, field=field)
    return decisions


def _streamed_model(store: S3Store, bucket: str, path: str, field: str) -> Decision:
    """The decision on a streamed model's prefix: safetensors there, or why not."""
    prefix = path if not path or path.endswith("/") else f"{path}/"
    try:
        keys = [obj.key for obj in store.list_objects(bucket=bucket, prefix=prefix)]
    except StoreError as err:
        return Decision(False, type(err).__name__, f"{field}: cannot read it: {err}")
    return check_safetensors(bucket=bucket, prefix=prefix, keys=keys, field=field)


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


@dataclass(frozen=True)
class _Verified:
    """The verdicts of one stack's stores, what they were verified for, and when."""

    key: tuple[object, ...]
    at: float
    verdicts: list[StoreVerdict]


class StoreVerdicts:
    """Each stack's store verdicts, verified again only when they may have changed.

    A stack's stores are verified (``verify_data_stores``, ``create=True``) when its generation
    or the resourceVersion of a credentials Secret differs from the last verification, or
    ``recheck_seconds`` have passed since it (a bucket can be reconfigured outside Kubernetes);
    otherwise the last verdicts are given again. Same verdicts, same status: an unchanged stack
    costs one Secret read per pass and no write. A store whose endpoint does not answer on a
    re-check keeps its previous verdict for the same spec and Secret: an outage of the store is
    no reason to stop models that already run (the residency audit still records it), while a
    store never verified stays held back. Shared by the passes of every stack (thread-safe).
    """

    def __init__(self, *, recheck_seconds: float) -> None:
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._verified: dict[tuple[str, str], _Verified] = {}

    def verdicts(self, *, kube: Kube, stack: SovereignStack) -> list[StoreVerdict]:
        """The verdict of every S3 store of ``stack``, in spec order."""
        namespace, name = stack.metadata.namespace or "", stack.metadata.name or ""
        secrets = sorted({s.s3.credentials_secret_ref.name for s in stack.spec.data_stores
                          if s.s3 is not None and s.s3.credentials_secret_ref is not None})
        versions = [((kube.get(SECRET, name=secret, namespace=namespace) or {}).get("metadata") or {}).get(
            "resourceVersion") for secret in secrets]
        key = (stack.metadata.uid, stack.metadata.generation, *zip(secrets, versions))
        with self._lock:
            last = self._verified.get((namespace, name))
        if last is not None and last.key == key and time.monotonic() - last.at < self.recheck_seconds:
            return last.verdicts
        verdicts = verify_data_stores(kube=kube, stack=stack, create=True, check_models=True)
        if last is not None and last.key == key:
            verdicts = [_unless_unreachable(verdict, last.verdicts) for verdict in verdicts]
        with self._lock:
            self._verified[(namespace, name)] = _Verified(key, time.monotonic(), verdicts)
        return verdicts

    def forget(self, *, namespace: str, name: str) -> None:
        """Drop a deleted stack's verdicts."""
        with self._lock:
            self._verified.pop((namespace, name), None)


def _unless_unreachable(verdict: StoreVerdict, previous: list[StoreVerdict]) -> StoreVerdict:
    if verdict.decision.reason != StoreUnreachable.__name__:
        return verdict
    before = next((v for v in previous if v.name == verdict.name), None)
    if before is None:
        return verdict
    log.warning("data store %s: %s; keeping its previous verdict (%s) until it answers", verdict.name,
                verdict.decision.message, before.decision.reason)
    return before
