"""One S3-compatible store (AWS, MinIO, Ceph RGW, ...) behind typed, credential-free calls.

``S3Store`` is the only place that talks boto3. It reads what the residency checks need
(location, default encryption, versioning, public access, replication), lists and streams
objects for the model loader, and creates buckets. Callers: ``services.store_check``,
``services.fetch_model`` and the reconciler. Every botocore error becomes one of
``stores.errors``; a call the server does not implement comes back as ``readings.Unsupported``
instead of an error or a made-up value.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from sovereign.stores import errors
from sovereign.stores.credentials import Credentials
from sovereign.stores.etag import part_size_from_count, uniform_part_sizes
from sovereign.stores.readings import (
    DEFAULT_REGION,
    BucketSetup,
    Encryption,
    ObjectContent,
    ObjectHead,
    ObjectInfo,
    PublicAccess,
    PublicAccessBlock,
    ReplicationDestination,
    Unsupported,
    Versioning,
    anonymous_policy_grants,
    normalize_location,
)

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_PUBLIC_GROUPS = {
    "http://acs.amazonaws.com/groups/global/AllUsers": "AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers": "AuthenticatedUsers",
}
# The IAM action each call needs, so an AccessDenied error can say what to grant.
_IAM_ACTION = {
    "ListObjectsV2": "s3:ListBucket",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "GetBucketLocation": "s3:GetBucketLocation",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "GetBucketPolicy": "s3:GetBucketPolicy",
    "GetBucketAcl": "s3:GetBucketAcl",
    "GetBucketReplication": "s3:GetReplicationConfiguration",
    "CreateBucket": "s3:CreateBucket",
}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "InvalidClientTokenId", "TokenRefreshRequired"}
_REGION_CODES = {"AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                 "InvalidLocationConstraint", "InvalidRegion", "PermanentRedirect", "301"}


class S3Store:
    """A client for one endpoint and signing region; safe to share between threads.

    ``endpoint`` None means AWS S3 itself. ``credentials`` None means the ambient ones (IRSA,
    instance profile, as boto3 finds them). ``path_style`` addresses buckets as
    ``endpoint/bucket`` (what MinIO and most in-country stores need) rather than
    ``bucket.endpoint``.
    """

    def __init__(
        self,
        *,
        endpoint: str | None,
        region: str,
        credentials: Credentials | None,
        path_style: bool = False,
        max_connections: int = 10,
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self.path_style = path_style
        self._credentials = credentials
        self._max_connections = max_connections
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "virtual"},
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=max_connections,
            # boto3 >= 1.36 adds CRC checksums to every request by default, which several
            # S3-compatible servers reject (boto/boto3#4392); send them only where S3 requires.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id if credentials else None,
            aws_secret_access_key=credentials.secret_access_key if credentials else None,
            aws_session_token=credentials.session_token if credentials else None,
            region_name=region,
        )
        self._client = session.client("s3", endpoint_url=endpoint, config=config)

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.where!r}, region={self.region!r})"

    @property
    def where(self) -> str:
        """The endpoint as messages name it."""
        return self.endpoint or f"AWS S3 ({self.region})"

    def with_region(self, region: str) -> S3Store:
        """The same endpoint and credentials, signing for another region."""
        return S3Store(endpoint=self.endpoint, region=region, credentials=self._credentials,
                       path_style=self.path_style, max_connections=self._max_connections)

    # -- objects ----------------------------------------------------------------------------

    def list_objects(self, *, bucket: str, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        objects: list[ObjectInfo] = []
        with self._errors("ListObjectsV2", bucket=bucket):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    objects.append(ObjectInfo(key=item["Key"], size=item["Size"],
                                              etag=_unquote(item.get("ETag", "")),
                                              last_modified=item.get("LastModified")))
        return objects

    def list_prefixes(self, *, bucket: str, prefix: str, limit: int = 20) -> list[str]:
        """The "folders" directly under ``prefix`` (``/``-delimited), at most ``limit``."""
        with self._errors("ListObjectsV2", bucket=bucket):
            response = self._client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/",
                                                    MaxKeys=limit)
        return [p["Prefix"] for p in response.get("CommonPrefixes", [])][:limit]

    def head_object(self, *, bucket: str, key: str) -> ObjectHead:
        with self._errors("HeadObject", bucket=bucket, key=key):
            # ChecksumMode: the CRC32 the store keeps of the object, where it keeps one.
            response = self._client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        return ObjectHead(
            key=key,
            size=response["ContentLength"],
            etag=_unquote(response.get("ETag", "")),
            server_side_encryption=response.get("ServerSideEncryption"),
            customer_key=bool(response.get("SSECustomerAlgorithm")),
            last_modified=response.get("LastModified"),
            sha256=_declared_sha256(response.get("Metadata") or {}),
            checksum_crc32=response.get("ChecksumCRC32") or None,
            checksum_type=response.get("ChecksumType") or None,
        )

    def read_start(self, *, bucket: str, key: str, length: int) -> bytes:
        """The first ``length`` bytes of an object (fewer if it is shorter), with one ranged GET."""
        with self._errors("GetObject", bucket=bucket, key=key):
            response = self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
        body = response["Body"]
        try:
            with self._errors("GetObject", bucket=bucket, key=key, streaming=True):
                return body.read(length)
        finally:
            body.close()

    def read_object(self, *, bucket: str, key: str, limit: int) -> ObjectContent:
        """A whole object of at most ``limit`` bytes, with its ETag and VersionId (read in one
        GET, so the bytes and the version belong together); a bigger one is an error naming the limit."""
        with self._errors("GetObject", bucket=bucket, key=key):
            response = self._client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            if response["ContentLength"] > limit:
                raise errors.StoreError(
                    f"s3://{bucket}/{key} on {self.where} is {response['ContentLength']} bytes, more than the "
                    f"{limit} read whole; keep it smaller")
            with self._errors("GetObject", bucket=bucket, key=key, streaming=True):
                data = body.read()
        finally:
            body.close()
        version = response.get("VersionId")
        return ObjectContent(key=key, data=data, etag=_unquote(response.get("ETag", "")),
                             version_id=version if version and version != "null" else None)

    def part_sizes(self, *, bucket: str, key: str, size: int, parts_count: int,
                   every: bool = False) -> list[int]:
        """The size of each part of a multipart object, needed to recompute its ETag.

        HeadObject of part 1 and of the last part is enough for uploads split evenly (all
        common uploaders: every part the size of the first, the last one the rest); when the
        last one is not what even parts predict, or with ``every``, each part is asked for. A
        store that does not answer per-part HEADs (``PartNumber``) gets the part size worked out
        from the part count and the size, when that is unambiguous
        (``etag.part_size_from_count``). An upload uneven in its middle parts only is not seen
        here: the ETag then does not match, and the loader asks again with ``every``.
        """
        try:
            first = self._part_head(bucket=bucket, key=key, part=1)
        except errors.StoreError as err:
            if isinstance(err, (errors.StoreUnreachable, errors.CredentialsRejected,
                                errors.ObjectChanged)):
                raise
            derived = part_size_from_count(size=size, parts_count=parts_count)
            if derived is None:
                raise
            log.info("%s did not give the size of part 1 of s3://%s/%s (%s); %d parts of %d "
                     "bytes follow from its size", self.where, bucket, key, err.code, parts_count,
                     derived)
            return uniform_part_sizes(size=size, first_part=derived,  # type: ignore[return-value]
                                      parts_count=parts_count)
        sizes = uniform_part_sizes(size=size, first_part=first, parts_count=parts_count)
        if not every and sizes is not None and (
                parts_count == 1
                or self._part_head(bucket=bucket, key=key, part=parts_count) == sizes[-1]):
            return sizes
        return [first] + [self._part_head(bucket=bucket, key=key, part=n)
                          for n in range(2, parts_count + 1)]

    def _part_head(self, *, bucket: str, key: str, part: int) -> int:
        with self._errors("HeadObject", bucket=bucket, key=key):
            return self._client.head_object(Bucket=bucket, Key=key, PartNumber=part)["ContentLength"]

    def read_range(self, *, bucket: str, key: str, etag: str, start: int, end: int,
                   chunk: int = _CHUNK) -> Iterator[bytes]:
        """Stream bytes ``[start, end)`` of an object, only while its ETag is still ``etag``.

        The model loader's parallel GETs: ``If-Match`` makes the server refuse
        (``ObjectChanged``) once the object was replaced, so ranges of two versions never end up
        in one file. A broken connection raises ``TransferInterrupted`` (the caller asks again
        from where the bytes stopped); a server that ignores the range is an error, not a
        silently wrong file.
        """
        request = {"Bucket": bucket, "Key": key, "IfMatch": f'"{etag}"',
                   "Range": f"bytes={start}-{end - 1}"}
        with self._errors("GetObject", bucket=bucket, key=key):
            response = self._client.get_object(**request)
        body = response["Body"]
        try:
            if not str(response.get("ContentRange", "")).startswith(f"bytes {start}-{end - 1}/"):
                raise errors.StoreError(
                    f"{self.where} did not answer a ranged GET of s3://{bucket}/{key} with the "
                    f"bytes asked for ({start}-{end - 1}, got {response.get('ContentRange')!r}): "
                    "the loader needs a store that serves byte ranges")
            with self._errors("GetObject", bucket=bucket, key=key, streaming=True):
                yield from body.iter_chunks(chunk)
        finally:
            body.close()

    # -- bucket readings --------------------------------------------------------------------

    def bucket_location(self, *, bucket: str) -> str:
        """The region the bucket lives in, normalised (``us-east-1`` for none, ``eu-west-1`` for EU).

        Raises ``BucketNotFound`` when the bucket does not exist. A server that refuses the
        signing region (MinIO serves exactly one) says which region it is, and that answer is
        the location.
        """
        try:
            with self._errors("GetBucketLocation", bucket=bucket):
                response = self._client.get_bucket_location(Bucket=bucket)
        except errors.RegionMismatch as err:
            if not err.server_region or err.server_region == self.region:
                raise
            return self.with_region(err.server_region).bucket_location(bucket=bucket)
        return normalize_location(response.get("LocationConstraint"))

    def default_encryption(self, *, bucket: str) -> Encryption | Unsupported:
        response = self._optional("GetBucketEncryption", bucket=bucket,
                                  absent="ServerSideEncryptionConfigurationNotFoundError")
        if response is None:
            return Encryption(algorithm=None)
        if isinstance(response, Unsupported):
            return response
        rules = response.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        for rule in rules:
            default = rule.get("ApplyServerSideEncryptionByDefault") or {}
            if default.get("SSEAlgorithm"):
                return Encryption(algorithm=default["SSEAlgorithm"],
                                  kms_key_id=default.get("KMSMasterKeyID"))
        return Encryption(algorithm=None)

    def versioning(self, *, bucket: str) -> Versioning | Unsupported:
        response = self._optional("GetBucketVersioning", bucket=bucket)
        if isinstance(response, Unsupported):
            return response
        assert response is not None
        return Versioning(response["Status"]) if response.get("Status") else Versioning.OFF

    def public_access(self, *, bucket: str) -> PublicAccess:
        """The public-access block, the anonymous grants of the bucket policy and of its ACL."""
        return PublicAccess(block=self._public_access_block(bucket=bucket),
                            policy_grants=self._policy_grants(bucket=bucket),
                            acl_grants=self._acl_grants(bucket=bucket))

    def _public_access_block(self, *, bucket: str) -> PublicAccessBlock | Unsupported:
        response = self._optional("GetPublicAccessBlock", bucket=bucket,
                                  absent="NoSuchPublicAccessBlockConfiguration")
        if isinstance(response, Unsupported):
            return response
        config = (response or {}).get("PublicAccessBlockConfiguration", {})
        return PublicAccessBlock(
            block_public_acls=bool(config.get("BlockPublicAcls")),
            ignore_public_acls=bool(config.get("IgnorePublicAcls")),
            block_public_policy=bool(config.get("BlockPublicPolicy")),
            restrict_public_buckets=bool(config.get("RestrictPublicBuckets")),
        )

    def _policy_grants(self, *, bucket: str) -> tuple[str, ...] | Unsupported:
        response = self._optional("GetBucketPolicy", bucket=bucket, absent="NoSuchBucketPolicy")
        if isinstance(response, Unsupported):
            return response
        if response is None:
            return ()
        try:
            return anonymous_policy_grants(response["Policy"])
        except (ValueError, AttributeError, TypeError):
            raise errors.StoreError(
                f"{self.where} returned a bucket policy for {bucket!r} that is not a JSON "
                "policy document; inspect it with GetBucketPolicy") from None

    def _acl_grants(self, *, bucket: str) -> tuple[str, ...] | Unsupported:
        response = self._optional("GetBucketAcl", bucket=bucket)
        if isinstance(response, Unsupported):
            return response
        assert response is not None
        grants = {
            f"{_PUBLIC_GROUPS[grant['Grantee']['URI']]}:{grant.get('Permission', '')}"
            for grant in response.get("Grants", [])
            if grant.get("Grantee", {}).get("URI") in _PUBLIC_GROUPS
        }
        return tuple(sorted(grants))

    def replication(self, *, bucket: str) -> tuple[ReplicationDestination, ...] | Unsupported:
        """Where the bucket's enabled replication rules copy objects to, with their regions.

        AWS destination ARNs (``arn:aws:s3:::bucket``) carry no region, so the destination
        bucket's location is asked (None when it cannot be read); MinIO's
        (``arn:minio:replication:<region>:<id>:<bucket>``) carry the target's region.
        """
        response = self._optional("GetBucketReplication", bucket=bucket,
                                  absent="ReplicationConfigurationNotFoundError")
        if isinstance(response, Unsupported):
            return response
        rules = (response or {}).get("ReplicationConfiguration", {}).get("Rules", [])
        return tuple(
            ReplicationDestination(rule_id=rule.get("ID", ""), bucket_arn=arn,
                                   region=self._destination_region(arn))
            for rule in rules
            if rule.get("Status") == "Enabled"
            for arn in [rule.get("Destination", {}).get("Bucket", "")]
        )

    def _destination_region(self, arn: str) -> str | None:
        parts = arn.split(":", 5)
        if len(parts) != 6:
            return None
        _, _, service, region, _, resource = parts
        if region:
            return normalize_location(region)
        if service != "s3":
            return None
        try:
            return self.bucket_location(bucket=resource)
        except errors.StoreError as err:
            log.info("cannot read the location of replication destination %s: %s", arn, err)
            return None

    # -- bucket creation --------------------------------------------------------------------

    def create_bucket(self, *, bucket: str, region: str, encryption: bool,
                      versioning: bool) -> BucketSetup:
        """Create ``bucket`` in ``region`` (or adopt it when it is already ours and there).

        Encryption and versioning are read back after setting them, so a server that ignored
        or refused a setting shows it. Encryption is SSE-S3 (``AES256``); MinIO answers
        ``Unsupported`` when it has no KMS. An existing bucket of ours in another region raises
        ``RegionMismatch``: adopting it would break residency.
        """
        request: dict[str, Any] = {"Bucket": bucket}
        if region != DEFAULT_REGION:
            # S3 rejects an explicit us-east-1 constraint; that region is the implicit default.
            request["CreateBucketConfiguration"] = {"LocationConstraint": region}
        created = True
        try:
            with self._errors("CreateBucket", bucket=bucket):
                self._client.create_bucket(**request)
        except errors.StoreError as err:
            if err.code != "BucketAlreadyOwnedByYou":
                raise
            created = False
        location = self.bucket_location(bucket=bucket)
        if location != region:
            raise errors.RegionMismatch(
                f"bucket {bucket!r} at {self.where} is in region {location!r}, not {region!r}: "
                "choose another bucket name or move the data", code="RegionMismatch")
        return BucketSetup(
            bucket=bucket,
            created=created,
            location=location,
            encryption=self._set_encryption(bucket=bucket) if encryption
            else self.default_encryption(bucket=bucket),
            versioning=self._set_versioning(bucket=bucket, enabled=versioning),
        )

    def _set_encryption(self, *, bucket: str) -> Encryption | Unsupported:
        config = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
        refused = self._optional("PutBucketEncryption", bucket=bucket,
                                 ServerSideEncryptionConfiguration=config)
        return refused if isinstance(refused, Unsupported) else self.default_encryption(bucket=bucket)

    def _set_versioning(self, *, bucket: str, enabled: bool) -> Versioning | Unsupported:
        if enabled:
            refused = self._optional("PutBucketVersioning", bucket=bucket,
                                     VersioningConfiguration={"Status": "Enabled"})
            if isinstance(refused, Unsupported):
                return refused
        return self.versioning(bucket=bucket)

    # -- error translation ------------------------------------------------------------------

    def _optional(self, operation: str, *, bucket: str, absent: str | None = None,
                  **request: Any) -> dict[str, Any] | Unsupported | None:
        """Call a bucket sub-resource: None when it is not configured, Unsupported when the
        server does not implement it (501 NotImplemented), the response otherwise."""
        try:
            with self._errors(operation, bucket=bucket):
                return getattr(self._client, xform_name(operation))(Bucket=bucket, **request)
        except errors.StoreError as err:
            if absent is not None and err.code == absent:
                return None
            if err.code in ("NotImplemented", "501"):
                return Unsupported(operation=operation, message=err.server_message or str(err))
            raise

    @contextlib.contextmanager
    def _errors(self, operation: str, *, bucket: str, key: str | None = None,
                streaming: bool = False) -> Iterator[None]:
        """Turn botocore errors raised inside into ``stores.errors``; ``streaming``: while a
        response body is read, where a broken connection is an interrupted transfer."""
        try:
            yield
        except ClientError as err:
            raise self._client_error(err, operation, bucket=bucket, key=key) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise errors.MissingCredentials(
                f"{operation} on bucket {bucket!r} at {self.where}: no credentials found: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the data store's "
                "credentialsSecretRef) or give the pod an identity (IRSA)") from None
        except BotoCoreError as err:
            target = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
            reason = f"{type(err).__name__}: {str(err).rstrip('.')}"
            said = f"{operation} on {target} at {self.where}: {reason}"
            if streaming and isinstance(err, (HTTPClientError, IncompleteReadError)):
                raise errors.TransferInterrupted(f"{said}. Run again to resume",
                                                 server_message=reason) from None
            if isinstance(err, (HTTPClientError, BotoConnectionError)):
                raise errors.StoreUnreachable(
                    f"{said}. Check the endpoint URL and that the store is up and reachable "
                    "from here", server_message=reason) from None
            raise errors.StoreError(said, server_message=reason) from None

    def _client_error(self, err: ClientError, operation: str, *, bucket: str,
                      key: str | None) -> errors.StoreError:
        error = err.response.get("Error", {})
        status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        # HEAD requests have no body, so only the HTTP status tells what went wrong.
        code = str(error.get("Code") or status)
        message = error.get("Message") or _HTTP_STATUS_MEANING.get(code, "no message")
        target = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
        said = f"{operation} on {target} at {self.where}: {code}: {message.rstrip('.')}"
        details = {"code": code, "server_message": message}
        if code in _CREDENTIAL_CODES:
            return errors.CredentialsRejected(
                f"{said}. The store does not accept these credentials: check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (the data store's credentials Secret)", **details)
        if code in ("AccessDenied", "AllAccessDisabled", "403"):
            action = _IAM_ACTION.get(operation, f"s3:{operation}")
            return errors.AccessDenied(
                f"{said}. Grant the credentials {action} on bucket {bucket!r}, or check that "
                "they are the right ones", **details)
        if code == "NoSuchBucket" or (code == "404" and key is None):
            return errors.BucketNotFound(
                f"{said}. Check the bucket name (dataStores[].s3.bucket, --bucket) and the "
                "endpoint, or create the bucket", **details)
        if code in ("NoSuchKey", "404"):
            return errors.ObjectNotFound(f"{said}. Check the path", **details)
        if code in ("PreconditionFailed", "412"):
            return errors.ObjectChanged(
                f"{said}. The object was replaced while it was read; run again to fetch the new "
                "version", **details)
        if code in _REGION_CODES:
            return errors.RegionMismatch(
                f"{said}. The request's region does not match the bucket's or the server's: set "
                "the data store's region to the one the server names", **details,
                server_region=error.get("Region") or None)
        return errors.StoreError(said, **details)


_HTTP_STATUS_MEANING = {"403": "Forbidden", "404": "Not Found", "412": "Precondition Failed",
                        "501": "Not Implemented", "301": "Moved Permanently"}


def _declared_sha256(metadata: dict[str, str]) -> str | None:
    value = str(metadata.get("sha256", "")).strip().lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


def _unquote(etag: str) -> str:
    return etag.strip('"')
