"""Data stores: a PersistentVolumeClaim per volume store, and how pods reach each kind of store.

Volume stores become a PVC named after the store. With ``deletionPolicy: Retain`` (the default)
the claim has no ownerReference to the stack, so garbage collection never takes the data with
the stack; the ``sovereign.ai/deletion-policy`` annotation tells the pruner to leave it too.
With ``Delete`` the claim is owned by the stack and goes with it (or with the store's entry).

S3 stores have no Kubernetes object: pods that use one get its bucket, region and endpoint as
environment variables and its credentials by Secret reference, never inline. Pure; called by
``render.stack`` and ``render.application``.
"""

from __future__ import annotations

from typing import Any

from sovereign.api import DataStore, DeletionPolicy, SovereignStack
from sovereign.api.models import S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY
from sovereign.render import names, pod
from sovereign.render.names import Component

#: Where an application finds a volume store: ``/data/<store>``.
DATA_ROOT = "/data"


def render_data_store(*, stack: SovereignStack, store: DataStore) -> list[dict[str, Any]]:
    """The objects of one store: a PVC for a volume store, nothing for an S3 store."""
    if store.volume is None:
        return []
    spec: dict[str, Any] = {"accessModes": [mode.value for mode in store.volume.access_modes]}
    if store.volume.storage_class_name is not None:
        spec["storageClassName"] = store.volume.storage_class_name
    spec["resources"] = {"requests": {"storage": store.volume.size}}
    return [
        names.stamped({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": names.metadata(
                stack,
                name=store.name,
                component=Component.STORAGE,
                entry=store.name,
                owned=store.deletion_policy is DeletionPolicy.DELETE,
                annotations={names.DELETION_POLICY_ANNOTATION: store.deletion_policy.value},
            ),
            "spec": spec,
        })
    ]


def store_env(store: DataStore) -> list[pod.EnvVar]:
    """``SOVEREIGN_STORE_<NAME>_*``: where a pod finds the store, and its credentials."""
    prefix = f"SOVEREIGN_STORE_{names.env_key(store.name)}_"
    if store.volume is not None:
        return [pod.value(f"{prefix}PATH", f"{DATA_ROOT}/{store.name}")]
    s3 = store.s3
    assert s3 is not None, "api validation requires exactly one of s3 or volume"
    env = [
        pod.value(f"{prefix}BUCKET", s3.bucket),
        pod.value(f"{prefix}REGION", s3.region),
        pod.value(f"{prefix}PATH_STYLE", "true" if s3.force_path_style else "false"),
    ]
    if s3.endpoint:
        env.append(pod.value(f"{prefix}ENDPOINT", s3.endpoint))
    if s3.credentials_secret_ref is not None:
        secret = s3.credentials_secret_ref.name
        env += [
            pod.secret_value(f"{prefix}ACCESS_KEY_ID", secret=secret, key=S3_ACCESS_KEY_ID_KEY),
            pod.secret_value(f"{prefix}SECRET_ACCESS_KEY", secret=secret, key=S3_SECRET_ACCESS_KEY_KEY),
        ]
    return env


def sdk_env(store: DataStore) -> list[pod.EnvVar]:
    """The AWS SDKs' own variables for an S3 store (a pod can have one set of them)."""
    s3 = store.s3
    assert s3 is not None, "only S3 stores have SDK settings"
    env = [pod.value("AWS_REGION", s3.region)]
    if s3.endpoint:
        env.append(pod.value("AWS_ENDPOINT_URL_S3", s3.endpoint))
    return env + credentials_env(store)


def credentials_env(store: DataStore) -> list[pod.EnvVar]:
    """``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the store's Secret; none for
    ambient credentials (IRSA), when the store names no Secret."""
    s3 = store.s3
    if s3 is None or s3.credentials_secret_ref is None:
        return []
    secret = s3.credentials_secret_ref.name
    return [
        pod.secret_value(S3_ACCESS_KEY_ID_KEY, secret=secret, key=S3_ACCESS_KEY_ID_KEY),
        pod.secret_value(S3_SECRET_ACCESS_KEY_KEY, secret=secret, key=S3_SECRET_ACCESS_KEY_KEY),
    ]


def volume_mount(store: DataStore, *, read_only: bool = False, sub_path: str = "",
                 mount_path: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod volume and the container mount of a volume store."""
    volume_name = f"store-{store.name}"
    volume = {"name": volume_name, "persistentVolumeClaim": {"claimName": store.name, "readOnly": read_only}}
    mount: dict[str, Any] = {"name": volume_name, "mountPath": mount_path or f"{DATA_ROOT}/{store.name}"}
    if sub_path:
        mount["subPath"] = sub_path
    if read_only:
        mount["readOnly"] = True
    return volume, mount
