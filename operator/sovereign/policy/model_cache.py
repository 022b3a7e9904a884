"""Can the cluster give a model the cache its ``cache.layout`` asks for? Pure decisions.

A ``SharedVolume`` cache is one ReadWriteMany claim that every replica mounts, on whatever node
it runs. A StorageClass does not say which access modes its provisioner serves, so the decision
rests on what can be seen honestly: the class must exist (the named one, or the cluster's
default when none is named), and its provisioner must be one known to provision ReadWriteMany
file volumes, or the class must carry ``sovereign.ai/access-modes`` listing ReadWriteMany (a
cluster admin vouching for a provisioner this list does not know). Anything else would leave the
claim Pending, or bound ReadWriteOnce, with every replica waiting on it; the model is held back
instead, and the message names the field and the ways out.

``PerReplica`` and ``PerNode`` need nothing from a class that the cluster cannot give (PerNode
uses a directory on the node). Called by ``services.reconcile`` through ``check_cache``; the
decision lands verbatim in ``ModelsReady``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sovereign.api import CacheLayout, ModelSpec
from sovereign.api.models import RWX_ANNOTATION
from sovereign.policy.residency import find_storage_class
from sovereign.policy.residency_store import Decision

# Reasons.
CACHE_AVAILABLE = "CacheAvailable"
CACHE_CLASS_MISSING = "CacheStorageClassMissing"
CACHE_CLASS_NOT_SHARED = "CacheStorageClassNotReadWriteMany"
#: The reasons of a cache the cluster cannot provide.
UNAVAILABLE = frozenset({CACHE_CLASS_MISSING, CACHE_CLASS_NOT_SHARED})

READ_WRITE_MANY = "ReadWriteMany"
#: CSI drivers and in-tree provisioners whose volumes are file systems that several nodes mount
#: read-write at once (ReadWriteMany), as their own documentation states.
SHARED_PROVISIONERS = frozenset({
    "efs.csi.aws.com",                      # Amazon EFS
    "fsx.csi.aws.com",                      # Amazon FSx for Lustre
    "filestore.csi.storage.gke.io",         # Google Filestore
    "file.csi.azure.com",                   # Azure Files
    "cephfs.csi.ceph.com",                  # CephFS (Rook)
    "rook-ceph.cephfs.csi.ceph.com",        # CephFS as Rook names its driver
    "nfs.csi.k8s.io",                       # the Kubernetes NFS CSI driver
    "cluster.local/nfs-subdir-external-provisioner",
    "k8s-sigs.io/nfs-subdir-external-provisioner",
    "driver.longhorn.io",                   # Longhorn (its RWX volumes are served over NFS)
    "csi.trident.netapp.io",                # NetApp Trident (ONTAP NAS)
    "spectrumscale.csi.ibm.com",            # IBM Storage Scale
    "lustre.csi.hpe.com",
})  # fmt: skip


def check_cache(*, model: ModelSpec, field: str, storage_classes: Mapping[str, Mapping[str, Any]]) -> Decision:
    """Whether the cluster can provide ``model``'s cache; ``field`` is the spec path of the
    model's ``cache`` block (``spec.models[0].cache``), named in the message."""
    if model.cache.layout is not CacheLayout.SHARED_VOLUME:
        return Decision(True, CACHE_AVAILABLE, f"cache layout {model.cache.layout.value} needs no StorageClass")
    name = model.cache.storage_class_name
    storage_class = find_storage_class(storage_classes, name)
    if storage_class is None:
        known = ", ".join(sorted(storage_classes)) or "none"
        what = (f"{field}.storageClassName: StorageClass {name!r} does not exist" if name is not None
                else f"{field}.layout SharedVolume: {field}.storageClassName is unset and the cluster has "
                     "no default StorageClass")
        return Decision(False, CACHE_CLASS_MISSING,
                        f"{what} (classes: {known}): name a class that provisions ReadWriteMany volumes, "
                        f"or set {field}.layout: PerNode")
    class_name = storage_class["metadata"]["name"]
    provisioner = storage_class.get("provisioner", "")
    vouched = READ_WRITE_MANY in _modes(storage_class)
    if provisioner in SHARED_PROVISIONERS or vouched:
        how = f"annotated {RWX_ANNOTATION}" if vouched else "a known ReadWriteMany provisioner"
        return Decision(True, CACHE_AVAILABLE, f"StorageClass {class_name} ({provisioner}, {how})")
    return Decision(False, CACHE_CLASS_NOT_SHARED,
                    f"{field}.layout SharedVolume needs a ReadWriteMany volume, and StorageClass {class_name!r} "
                    f"(provisioner {provisioner}) is not known to provision one: set {field}.storageClassName "
                    f"to a class that does (EFS, Filestore, Azure Files, CephFS, NFS...), annotate the class "
                    f"{RWX_ANNOTATION}={READ_WRITE_MANY} if its provisioner does, or set {field}.layout: PerNode")


def _modes(storage_class: Mapping[str, Any]) -> set[str]:
    text = ((storage_class.get("metadata") or {}).get("annotations") or {}).get(RWX_ANNOTATION, "")
    return {mode.strip() for mode in text.split(",") if mode.strip()}
