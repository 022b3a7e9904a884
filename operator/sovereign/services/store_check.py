"""Check one data store's bucket against the stack's residency rules, and what lies at a model's path.

Reads the bucket through ``stores.s3.S3Store`` (which the caller builds, with credentials it
loaded from the data store's Secret) and applies ``policy.residency_store``. Called by the
reconciler (DataStoresReady / ResidencyCompliant) and the residency audit timer. Errors that
stop every reading (unreachable endpoint, rejected credentials, missing permission) propagate
as ``stores.errors`` for the caller to turn into a condition; a bucket that does not exist is a
result (``BucketMissing``), not an error. ``probe_object`` reads what a model's ``source.path``
holds (for ``policy.model_source``); a missing key is a result too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sovereign.policy.residency_store import Decision, evaluate_bucket, summarize
from sovereign.stores.errors import BucketNotFound
from sovereign.stores.readings import BucketReadings, ObjectProbe
from sovereign.stores.s3 import S3Store

#: Bytes read from the start of a model file: enough for every format's magic number.
_START = 16


@dataclass(frozen=True)
class StoreCheck:
    """The readings of one bucket and the decision of every residency check on them."""

    readings: BucketReadings
    results: dict[str, Decision]

    @property
    def summary(self) -> Decision:
        return summarize(self.results)


def read_bucket(*, store: S3Store, bucket: str) -> BucketReadings:
    """Everything the residency policy looks at, read from the store."""
    try:
        location = store.bucket_location(bucket=bucket)
    except BucketNotFound:
        return BucketReadings(bucket=bucket, exists=False)
    if location != store.region:
        # S3 and MinIO only answer requests signed for the bucket's own region.
        store = store.with_region(location)
    return BucketReadings(
        bucket=bucket,
        exists=True,
        location=location,
        encryption=store.default_encryption(bucket=bucket),
        versioning=store.versioning(bucket=bucket),
        public_access=store.public_access(bucket=bucket),
        replication=store.replication(bucket=bucket),
    )


def check_store(
    *, store: S3Store, bucket: str, allowed_regions: Sequence[str], require_versioning: bool = False
) -> StoreCheck:
    """Read ``bucket`` and decide every residency check for ``allowed_regions``."""
    readings = read_bucket(store=store, bucket=bucket)
    return StoreCheck(
        readings=readings,
        results=evaluate_bucket(readings=readings, allowed_regions=allowed_regions,
                                require_versioning=require_versioning),
    )


def probe_object(*, store: S3Store, bucket: str, key: str) -> ObjectProbe:
    """What ``bucket`` holds at ``key``: existence and size from one listing, the first bytes from
    a ranged GET, and, when it is missing, the keys beside it with the same suffix."""
    found = [obj for obj in store.list_objects(bucket=bucket, prefix=key) if obj.key == key]
    if not found:
        directory, _, name = key.rpartition("/")
        folder = f"{directory}/" if directory else ""
        suffix = name[name.rfind("."):] if "." in name else None
        alike = tuple(obj.key for obj in store.list_objects(bucket=bucket, prefix=folder)
                      if suffix and obj.key.endswith(suffix) and "/" not in obj.key[len(folder):])
        return ObjectProbe(bucket=bucket, key=key, exists=False, alike=alike)
    (obj,) = found
    start = store.read_start(bucket=bucket, key=key, length=_START) if obj.size else b""
    return ObjectProbe(bucket=bucket, key=key, exists=True, size=obj.size, start=start)
