"""Typed object-store errors: one class per failure a user can act on, each saying the fix.

Raised by ``stores.s3`` (which turns botocore's errors into these) and caught by the services
and the ``fetch-model`` CLI. Messages name the endpoint, bucket and key, never the credentials:
the botocore error that caused one is dropped (``raise ... from None``) because its response
can carry the access key id (SignatureDoesNotMatch echoes it).
"""

from __future__ import annotations


class StoreError(Exception):
    """An object-store call failed; ``code`` is the S3 error code when the server sent one."""

    def __init__(self, message: str, *, code: str | None = None,
                 server_message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.server_message = server_message


class StoreUnreachable(StoreError):
    """The endpoint did not answer (connection refused, DNS, TLS, timeout)."""


class CredentialsRejected(StoreError):
    """The server does not know the access key or the signature does not match the secret."""


class AccessDenied(StoreError):
    """The credentials are valid but lack a permission for this bucket or call."""


class BucketNotFound(StoreError):
    """The bucket does not exist at this endpoint."""


class ObjectNotFound(StoreError):
    """The key does not exist in the bucket."""


class ObjectChanged(StoreError):
    """The object was replaced while it was being read (its ETag no longer matches)."""


class RegionMismatch(StoreError):
    """The server refused a request for a region other than its own.

    ``server_region`` is the region the server said it expects, when it said (AWS and MinIO put
    it in the error's ``Region`` field).
    """

    def __init__(self, message: str, *, code: str | None = None,
                 server_message: str | None = None, server_region: str | None = None) -> None:
        super().__init__(message, code=code, server_message=server_message)
        self.server_region = server_region


class TransferInterrupted(StoreError):
    """A download stopped midway (connection reset, read timeout); it can be resumed."""


class MissingCredentials(StoreError):
    """No credentials were given where they are read from (environment, Secret)."""
