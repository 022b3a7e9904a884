"""Residency rules for one S3 bucket: is it where the stack's jurisdiction allows, and kept there?

Pure: takes the readings ``stores.s3.S3Store`` made (as ``stores.readings`` values) and the
allowed regions, returns one ``Decision`` (ok, CamelCase reason, message) per check. The
reasons feed Conditions, Events and metrics verbatim. Called by ``services.store_check`` (the
reconciler and the residency audit). A reading the server could not give (``Unsupported``) is
reported as ``CheckUnsupported``, never assumed fine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from sovereign.stores.readings import (
    BucketReadings,
    Encryption,
    PublicAccess,
    PublicAccessBlock,
    ReplicationDestination,
    Unsupported,
    Versioning,
)

# Check names, in the order they are evaluated and shown.
EXISTS = "Exists"
LOCATION = "Location"
ENCRYPTION = "Encryption"
VERSIONING = "Versioning"
PUBLIC_ACCESS = "PublicAccess"
REPLICATION = "Replication"

# Reasons.
BUCKET_PRESENT = "BucketPresent"
BUCKET_MISSING = "BucketMissing"
LOCATION_IN_REGIONS = "LocationInRegions"
LOCATION_OUTSIDE_REGIONS = "LocationOutsideRegions"
ENCRYPTION_ON = "EncryptionOn"
ENCRYPTION_OFF = "EncryptionOff"
VERSIONING_ENABLED = "VersioningEnabled"
VERSIONING_OFF = "VersioningOff"
VERSIONING_NOT_REQUIRED = "VersioningNotRequired"
PUBLIC_ACCESS_BLOCKED = "PublicAccessBlocked"
NO_PUBLIC_GRANTS = "NoPublicGrants"
PUBLIC_ACCESS_ALLOWED = "PublicAccessAllowed"
NO_REPLICATION = "NoReplication"
REPLICATION_IN_REGIONS = "ReplicationInRegions"
REPLICATION_OUTSIDE_REGIONS = "ReplicationOutsideRegions"
REPLICATION_REGION_UNKNOWN = "ReplicationRegionUnknown"
CHECK_UNSUPPORTED = "CheckUnsupported"
COMPLIANT = "Compliant"
# Before any check: the store's credentials Secret (read by services.residency_stores).
CREDENTIALS_SECRET_MISSING = "CredentialsSecretMissing"
CREDENTIALS_INVALID = "CredentialsInvalid"


class Decision(NamedTuple):
    ok: bool
    reason: str
    message: str


def evaluate_bucket(
    *, readings: BucketReadings, allowed_regions: Sequence[str], require_versioning: bool = False
) -> dict[str, Decision]:
    """Every check of one bucket, by check name, in a stable order.

    A missing bucket yields only ``Exists``; a reading left None (not taken) is not checked.
    """
    bucket = readings.bucket
    if not readings.exists:
        return {EXISTS: Decision(False, BUCKET_MISSING,
                                 f"bucket {bucket!r} does not exist: create it in one of the "
                                 f"allowed regions ({_regions(allowed_regions)}) or fix its name")}
    results = {EXISTS: Decision(True, BUCKET_PRESENT, f"bucket {bucket!r} exists")}
    if readings.location is not None:
        results[LOCATION] = check_location(bucket=bucket, location=readings.location,
                                           allowed_regions=allowed_regions)
    if readings.encryption is not None:
        results[ENCRYPTION] = check_encryption(bucket=bucket, encryption=readings.encryption)
    if readings.versioning is not None:
        results[VERSIONING] = check_versioning(bucket=bucket, versioning=readings.versioning,
                                               required=require_versioning)
    if readings.public_access is not None:
        results[PUBLIC_ACCESS] = check_public_access(bucket=bucket, access=readings.public_access)
    if readings.replication is not None:
        results[REPLICATION] = check_replication(bucket=bucket, destinations=readings.replication,
                                                 allowed_regions=allowed_regions)
    return results


def summarize(results: Mapping[str, Decision]) -> Decision:
    """One decision for all checks: ok when every check is; otherwise the first failure's reason
    and every failure's message, so one Condition can say everything that is wrong."""
    failures = [decision for decision in results.values() if not decision.ok]
    if not failures:
        return Decision(True, COMPLIANT, "; ".join(d.message for d in results.values()))
    return Decision(False, failures[0].reason, "; ".join(d.message for d in failures))


def check_location(*, bucket: str, location: str, allowed_regions: Sequence[str]) -> Decision:
    if location in allowed_regions:
        return Decision(True, LOCATION_IN_REGIONS, f"bucket {bucket!r} is in {location}")
    return Decision(False, LOCATION_OUTSIDE_REGIONS,
                    f"bucket {bucket!r} is in {location}, outside the allowed regions "
                    f"({_regions(allowed_regions)}): use a bucket created in an allowed region")


def check_encryption(*, bucket: str, encryption: Encryption | Unsupported) -> Decision:
    if isinstance(encryption, Unsupported):
        return _unsupported(bucket, encryption)
    if encryption.enabled:
        key = f" with key {encryption.kms_key_id}" if encryption.kms_key_id else ""
        return Decision(True, ENCRYPTION_ON,
                        f"bucket {bucket!r} encrypts new objects by default ({encryption.algorithm}{key})")
    return Decision(False, ENCRYPTION_OFF,
                    f"bucket {bucket!r} has no default encryption: set SSE-S3 (AES256) or SSE-KMS "
                    "default encryption on it (MinIO needs a KMS configured for either)")


def check_versioning(*, bucket: str, versioning: Versioning | Unsupported,
                     required: bool) -> Decision:
    if isinstance(versioning, Unsupported):
        return _unsupported(bucket, versioning) if required else Decision(
            True, VERSIONING_NOT_REQUIRED,
            f"versioning of bucket {bucket!r} is not required (and the server cannot report it)")
    if versioning is Versioning.ENABLED:
        return Decision(True, VERSIONING_ENABLED, f"bucket {bucket!r} keeps object versions")
    if not required:
        return Decision(True, VERSIONING_NOT_REQUIRED,
                        f"versioning of bucket {bucket!r} is {versioning.value}, not required")
    return Decision(False, VERSIONING_OFF,
                    f"versioning of bucket {bucket!r} is {versioning.value}: enable it so deleted "
                    "or overwritten objects can be recovered")


def check_public_access(*, bucket: str, access: PublicAccess) -> Decision:
    """Anonymous access is allowed when a bucket policy or ACL grants it and no block disarms it.

    With the public-access block fully on, S3 ignores public ACLs and policies, so nothing
    else matters. Otherwise each of the policy and the ACL must be readable, or disarmed by its
    block switch (RestrictPublicBuckets, IgnorePublicAcls), for the check to conclude.
    """
    block = access.block if isinstance(access.block, PublicAccessBlock) else None
    if block is not None and block.fully_blocked:
        return Decision(True, PUBLIC_ACCESS_BLOCKED,
                        f"bucket {bucket!r} has every public-access block switch on")
    sources = (
        ("bucket policy", access.policy_grants, block is not None and block.restrict_public_buckets),
        ("bucket ACL", access.acl_grants, block is not None and block.ignore_public_acls),
    )
    grants: list[str] = []
    unknown: list[Unsupported] = []
    for label, reading, disarmed in sources:
        if disarmed:
            continue
        if isinstance(reading, Unsupported):
            unknown.append(reading)
        elif reading:
            grants.append(f"{label} allows {', '.join(reading)}")
    if grants:
        return Decision(False, PUBLIC_ACCESS_ALLOWED,
                        f"bucket {bucket!r} is open to anyone: {'; '.join(grants)}: remove the "
                        "anonymous grants or turn on the public-access block")
    if unknown:
        return _unsupported(bucket, *unknown)
    note = ""
    if isinstance(access.block, Unsupported):
        note = f" (the server does not support {access.block.operation})"
    return Decision(True, NO_PUBLIC_GRANTS,
                    f"no bucket policy or ACL of bucket {bucket!r} grants anonymous access{note}")


def check_replication(
    *, bucket: str, destinations: Sequence[ReplicationDestination] | Unsupported,
    allowed_regions: Sequence[str],
) -> Decision:
    if isinstance(destinations, Unsupported):
        return _unsupported(bucket, destinations)
    if not destinations:
        return Decision(True, NO_REPLICATION, f"bucket {bucket!r} replicates nowhere")
    outside = [d for d in destinations if d.region is not None and d.region not in allowed_regions]
    if outside:
        where = ", ".join(f"{d.bucket_arn} in {d.region}" for d in outside)
        return Decision(False, REPLICATION_OUTSIDE_REGIONS,
                        f"bucket {bucket!r} replicates to {where}, outside the allowed regions "
                        f"({_regions(allowed_regions)}): remove or retarget those replication rules")
    unknown = [d for d in destinations if d.region is None]
    if unknown:
        which = ", ".join(d.bucket_arn for d in unknown)
        return Decision(False, REPLICATION_REGION_UNKNOWN,
                        f"bucket {bucket!r} replicates to {which}, whose region cannot be read: "
                        "grant s3:GetBucketLocation on the destination or remove the rule")
    regions = sorted({d.region for d in destinations if d.region})
    return Decision(True, REPLICATION_IN_REGIONS,
                    f"bucket {bucket!r} replicates only within {', '.join(regions)}")


def _unsupported(bucket: str, *readings: Unsupported) -> Decision:
    calls = ", ".join(r.operation for r in readings)
    said = "; ".join(r.message for r in readings)
    return Decision(False, CHECK_UNSUPPORTED,
                    f"cannot check bucket {bucket!r}: the server does not support {calls} ({said})")


def _regions(allowed_regions: Sequence[str]) -> str:
    return ", ".join(allowed_regions) if allowed_regions else "none"
