"""Typed errors of Kubernetes requests: one class per thing a caller does differently.

``Kube`` (``kube.client``) raises these instead of the client library's ``ApiException`` or
urllib3's errors; each names the object (kind, namespace, name) and carries the apiserver's own
message. Callers decide by class: ``Unavailable`` is worth retrying soon, ``Conflict`` means
read again and redo, ``Invalid`` and ``Forbidden`` need a person (a spec or RBAC change), and
``NotServed`` means a CRD is not installed.
"""

from __future__ import annotations

import json
from typing import Any


class KubeError(RuntimeError):
    """A request to the apiserver failed; ``what`` names the object, ``status`` the HTTP code."""

    def __init__(self, message: str, *, what: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.what = what
        self.status = status
        self.reason = reason


class NotFound(KubeError):
    """The object does not exist."""


class NotServed(KubeError):
    """The apiserver does not serve this kind (its CRD is not installed)."""


class Conflict(KubeError):
    """The object changed under the request, or already exists: read again and redo."""


class Invalid(KubeError):
    """The apiserver rejected the object's content; sending it again cannot succeed."""


class Forbidden(KubeError):
    """Authentication or RBAC refused the request."""


class Unavailable(KubeError):
    """The apiserver could not be reached, was overloaded or failed; retry later."""


def from_response(*, status: int, body: bytes | str | None, action: str, what: str) -> KubeError:
    """The error for a non-2xx answer to ``action`` (a verb phrase) on ``what``."""
    status_body = _status_body(body)
    detail = status_body.get("message") or (body.decode(errors="replace") if isinstance(body, bytes) else body) or ""
    reason = status_body.get("reason", "")
    message = f"could not {action} {what}: HTTP {status}: {detail}".rstrip(": ")
    if status == 404:
        # An object that is missing has details naming it; a kind that is not served has none.
        named = bool((status_body.get("details") or {}).get("name"))
        return (NotFound if named else NotServed)(message, what=what, status=status, reason=reason)
    if status == 409:
        return Conflict(message, what=what, status=status, reason=reason)
    if status in (400, 422):
        return Invalid(message, what=what, status=status, reason=reason)
    if status in (401, 403):
        return Forbidden(message, what=what, status=status, reason=reason)
    return Unavailable(message, what=what, status=status, reason=reason)


def _status_body(body: bytes | str | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}
