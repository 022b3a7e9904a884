"""What an object store reports about a bucket and its objects, as plain frozen values.

No I/O here: ``stores.s3`` fills these from S3 answers, ``services.store_check`` hands them to
``policy.residency_store`` (which reads them as its input vocabulary) and ``services.fetch_model``
plans downloads from ``ObjectInfo``. S3's location quirks are normalised here, once, so every
caller compares plain region names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

# S3 reports the first region without a LocationConstraint, and buckets created long ago in
# Ireland with the legacy constraint "EU" (see the GetBucketLocation API reference).
DEFAULT_REGION = "us-east-1"
_LEGACY_LOCATIONS = {"EU": "eu-west-1"}


def normalize_location(constraint: str | None) -> str:
    """The region a GetBucketLocation ``LocationConstraint`` names.

    ``None`` or an empty constraint means ``us-east-1``; the legacy ``EU`` means ``eu-west-1``;
    anything else is the region itself, trimmed and lower-cased (MinIO echoes its configured
    region verbatim, so a server started with ``ME-CENTRAL-1`` still compares equal).
    """
    text = (constraint or "").strip()
    if not text:
        return DEFAULT_REGION
    return _LEGACY_LOCATIONS.get(text, text).lower()


@dataclass(frozen=True)
class Unsupported:
    """The server answered that it does not implement an S3 call (HTTP 501 ``NotImplemented``).

    Kept distinct from "not configured": a MinIO server without a KMS cannot store default
    encryption, and no MinIO implements GetPublicAccessBlock. Callers show it, never guess.
    """

    operation: str
    message: str


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a prefix: its key, size and ETag (without the quotes S3 puts around it)."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None = None

    @property
    def parts_count(self) -> int | None:
        """The number of parts of a multipart upload, read from its ``<md5>-<parts>`` ETag."""
        match = _MULTIPART_ETAG.fullmatch(self.etag)
        return int(match.group(1)) if match else None


_MULTIPART_ETAG = re.compile(r"[0-9a-f]{32}-(\d+)")
_SINGLE_ETAG = re.compile(r"[0-9a-f]{32}")


def etag_is_md5_based(etag: str) -> bool:
    """Whether an ETag has the shape of S3's MD5 ETags (plain MD5 or MD5-of-part-MD5s plus count).

    The shape is necessary, not sufficient: objects under SSE-KMS or SSE-C have MD5-shaped ETags
    that are not MD5s, which is why ``ObjectHead.etag_is_content_md5`` also looks at encryption.
    """
    return bool(_SINGLE_ETAG.fullmatch(etag) or _MULTIPART_ETAG.fullmatch(etag))


@dataclass(frozen=True)
class ObjectContent:
    """A whole small object (an evaluation dataset) and the version it was read at."""

    key: str
    data: bytes
    etag: str
    #: The VersionId on a versioned bucket; None on one that does not version.
    version_id: str | None

    @property
    def version(self) -> str:
        """What identifies this content for an auditor: the VersionId, else the ETag."""
        return self.version_id or self.etag


@dataclass(frozen=True)
class ObjectHead:
    """HeadObject's answer: size, ETag and how the object is encrypted at rest."""

    key: str
    size: int
    etag: str
    server_side_encryption: str | None
    customer_key: bool
    last_modified: datetime | None = None
    #: The SHA-256 of the content its uploader declared in the ``sha256`` user metadata
    #: (``x-amz-meta-sha256``, lowercase hex), as ``sovereign_dev`` and many mirroring tools
    #: upload weights; None when absent or not 64 hex digits.
    sha256: str | None = None
    #: The CRC32 checksum the store keeps of the object (HeadObject with ``ChecksumMode``), as S3
    #: spells it: base64 of the big-endian CRC32, ``-N`` after a composite one (the CRC32 of its
    #: parts' CRC32s), as uploaders using the AWS SDKs' default checksums leave; None without one.
    checksum_crc32: str | None = None
    #: ``FULL_OBJECT`` or ``COMPOSITE``: what ``checksum_crc32`` is computed over.
    checksum_type: str | None = None

    @property
    def etag_is_content_md5(self) -> bool:
        """Whether the ETag is derived from the content's MD5 and so can verify a local copy.

        True for unencrypted and SSE-S3 (``AES256``) objects; SSE-KMS and SSE-C ETags are opaque.
        """
        if self.customer_key or self.server_side_encryption not in (None, "AES256"):
            return False
        return etag_is_md5_based(self.etag)


@dataclass(frozen=True)
class ObjectProbe:
    """What a store holds at one key: whether the object exists, its size and first bytes, and
    (for messages) the keys of the same directory that end like it."""

    bucket: str
    key: str
    exists: bool
    size: int = 0
    start: bytes = b""
    alike: tuple[str, ...] = ()


@dataclass(frozen=True)
class Encryption:
    """A bucket's default encryption; ``algorithm`` is None when none is configured."""

    algorithm: str | None
    kms_key_id: str | None = None

    @property
    def enabled(self) -> bool:
        return self.algorithm is not None


class Versioning(StrEnum):
    """GetBucketVersioning's status; ``OFF`` is a bucket whose versioning was never enabled."""

    ENABLED = "Enabled"
    SUSPENDED = "Suspended"
    OFF = "Off"


@dataclass(frozen=True)
class PublicAccessBlock:
    """The four switches of an S3 public-access block; a missing configuration reads all False."""

    block_public_acls: bool
    ignore_public_acls: bool
    block_public_policy: bool
    restrict_public_buckets: bool

    @property
    def fully_blocked(self) -> bool:
        return all((self.block_public_acls, self.ignore_public_acls,
                    self.block_public_policy, self.restrict_public_buckets))


@dataclass(frozen=True)
class PublicAccess:
    """Everything that can make a bucket public, each reading possibly unsupported by the server.

    ``policy_grants`` lists the actions the bucket policy allows to anyone (principal ``*``)
    without a condition; ``acl_grants`` the permissions the bucket ACL gives to the AllUsers or
    AuthenticatedUsers groups. Object ACLs are not read (one request per object).
    """

    block: PublicAccessBlock | Unsupported
    policy_grants: tuple[str, ...] | Unsupported
    acl_grants: tuple[str, ...] | Unsupported


@dataclass(frozen=True)
class ReplicationDestination:
    """One replication rule's target bucket; ``region`` is None when it cannot be determined."""

    rule_id: str
    bucket_arn: str
    region: str | None


@dataclass(frozen=True)
class BucketReadings:
    """All readings of one bucket that the residency policy needs. ``exists`` False: nothing else."""

    bucket: str
    exists: bool
    location: str | None = None
    encryption: Encryption | Unsupported | None = None
    versioning: Versioning | Unsupported | None = None
    public_access: PublicAccess | None = None
    replication: tuple[ReplicationDestination, ...] | Unsupported | None = None


@dataclass(frozen=True)
class BucketSetup:
    """What ``S3Store.create_bucket`` left behind, read back from the server after setting it."""

    bucket: str
    created: bool
    location: str
    encryption: Encryption | Unsupported
    versioning: Versioning | Unsupported


_PUBLIC_PRINCIPALS = ("*", {"AWS": "*"}, {"AWS": ["*"]})


def anonymous_policy_grants(policy_document: str) -> tuple[str, ...]:
    """The actions a bucket policy allows to anyone, without a condition, sorted and unique.

    A statement counts when its effect is Allow, its principal is ``*`` (in any of the spellings
    S3 accepts) and it has no Condition: conditions such as a source-IP or VPC restriction are
    what AWS itself treats as "not public". An unreadable document raises ValueError.
    """
    document = json.loads(policy_document)
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    actions: set[str] = set()
    for statement in statements:
        if statement.get("Effect") != "Allow" or statement.get("Condition"):
            continue
        if statement.get("Principal") not in _PUBLIC_PRINCIPALS:
            continue
        granted = statement.get("Action", [])
        actions.update([granted] if isinstance(granted, str) else granted)
    return tuple(sorted(actions))
