"""S3 credentials that never show themselves: reprs, logs and error messages stay clean.

Built by the ``fetch-model`` CLI from the environment a Secret injects (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``) and by the reconciler from the Secret
a data store names (``credentialsSecretRef``); handed to ``stores.s3.S3Store``, which is the
only reader of the values. No credentials at all (None) means the ambient ones (IRSA).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sovereign.stores.errors import MissingCredentials

# The AWS SDKs' own names, which are also the keys of a data store's credentials Secret
# (api.models.S3_ACCESS_KEY_ID_KEY, held equal by tests/unit/stores). Spelled here rather than
# imported so the loader does not load the API's pydantic models (a fifth of a second).
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """An access key pair (and optional session token), redacted wherever it is printed."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    __str__ = __repr__

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], *, source: str,
                     required: bool = True) -> Credentials | None:
        """Read the AWS_* keys from the environment or a Secret's decoded data.

        ``source`` names where they were looked for ("the environment", "Secret gov-qa/s3-creds")
        so the error says where to add the missing keys. With ``required`` False, neither key
        set means ambient credentials (IRSA, instance profile) and returns None; one key
        without the other is always an error.
        """
        missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not values.get(name)]
        if len(missing) == 2 and not required:
            return None
        if missing:
            raise MissingCredentials(
                f"{' and '.join(missing)} not set in {source}: set both {ACCESS_KEY_ENV} and "
                f"{SECRET_KEY_ENV} (for a data store, in the Secret its credentialsSecret names)"
            )
        return cls(
            access_key_id=values[ACCESS_KEY_ENV],
            secret_access_key=values[SECRET_KEY_ENV],
            session_token=values.get(SESSION_TOKEN_ENV) or None,
        )
