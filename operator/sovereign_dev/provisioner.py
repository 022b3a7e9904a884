"""The local cluster's volume provisioner: simulated volumes for KWOK nodes, real ones on the real node.

Every pending PersistentVolumeClaim gets a PersistentVolume made for it (pre-bound through
``claimRef``, the way a CSI provisioner binds), sized as requested; volumes whose claim is gone
are deleted, as a ``Delete`` reclaim policy would.

- Claims of ``SHARED_CLASS`` (``sovereign-dev-shared``), when a real node runs: a real
  ReadWriteMany volume, a directory of the host under the real node's own directory
  (``/var/lib/sovereign-stack/realnode/volumes/<claim uid>``, so the node's clean stop removes
  it too), served as a hostPath volume pinned to the real node. Every pod using it runs there,
  so "many" readers and writers share one directory, as an NFS or CephFS volume would. The
  directory is world-writable: the claim's first writer is a non-root loader, and a hostPath
  volume gets no fsGroup.
- Every other claim: a simulated volume pinned by node affinity to the region the provisioner
  serves; KWOK runs no containers, so it holds nothing.

``ensure_classes`` creates ``SHARED_CLASS``: provisioner ``sovereign.ai/dev-hostpath``, allowed
in the real node's region only (residency checks read ``allowedTopologies``), and annotated
``sovereign.ai/access-modes: ReadWriteMany``, the annotation by which an admin vouches that a
class serves ReadWriteMany (a StorageClass does not say so itself; ``policy.model_cache``).

Run as a thread by ``devenv.DevEnvironment`` (``sovereign dev up``) and by the real-node tests.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from sovereign.api.models import RWX_ANNOTATION
from sovereign_dev.fleet import REGION_LABEL

log = logging.getLogger(__name__)
PROVISIONED_BY = "sovereign.ai/simulated-provisioner"
SHARED_CLASS = "sovereign-dev-shared"
SHARED_PROVISIONER = "sovereign.ai/dev-hostpath"
HOSTNAME_LABEL = "kubernetes.io/hostname"


class SimulatedProvisioner:
    """Volumes for the claims of a local cluster; ``real_node`` is ``(node name, node directory)``
    when a real node runs, whose claims of ``SHARED_CLASS`` get real directories."""

    def __init__(self, api: client.ApiClient, *, region: str, interval: float = 1.0,
                 real_node: tuple[str, Path] | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.region = region
        self.interval = interval
        self.real_node = real_node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-provisioner", daemon=True)

    def start(self) -> None:
        self.ensure_classes()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def ensure_classes(self) -> None:
        """The real node's ReadWriteMany class, when there is a real node."""
        if self.real_node is None:
            return
        body = {
            "metadata": {"name": SHARED_CLASS, "annotations": {RWX_ANNOTATION: "ReadWriteOnce,ReadWriteMany"}},
            "provisioner": SHARED_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowedTopologies": [{"matchLabelExpressions": [{"key": REGION_LABEL, "values": [self.region]}]}],
        }
        try:
            self.storage.create_storage_class(body)
        except ApiException as err:
            if err.status != 409:
                raise

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except ApiException as err:  # the apiserver going away at teardown, a conflict: retry
                log.debug("provisioner pass failed: %s", err.reason)

    def sync(self) -> None:
        claims = self.core.list_persistent_volume_claim_for_all_namespaces().items
        live = {c.metadata.uid for c in claims}
        for claim in claims:
            if claim.status.phase == "Pending" and not claim.spec.volume_name:
                self.core.create_persistent_volume(self.volume_for(claim))
        for volume in self.core.list_persistent_volume(label_selector=PROVISIONED_BY).items:
            ref = volume.spec.claim_ref
            if ref is None or ref.uid not in live:
                self.core.delete_persistent_volume(volume.metadata.name)
                if volume.spec.storage_class_name == SHARED_CLASS and self.real_node is not None:
                    shutil.rmtree(self._directory(volume.spec.host_path.path), ignore_errors=True)

    def volume_for(self, claim: Any) -> dict[str, Any]:
        if claim.spec.storage_class_name == SHARED_CLASS and self.real_node is not None:
            node, node_dir = self.real_node
            directory = node_dir / "volumes" / claim.metadata.uid
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
            source = {"hostPath": {"path": str(directory), "type": "Directory"}}
            where = [{"key": REGION_LABEL, "operator": "In", "values": [self.region]},
                     {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]
        else:
            source = {"hostPath": {"path": f"/var/lib/sovereign-dev/{claim.metadata.uid}"}}
            where = [{"key": REGION_LABEL, "operator": "In", "values": [self.region]}]
        return {
            "metadata": {"name": f"pv-{claim.metadata.uid}", "labels": {PROVISIONED_BY: "true"}},
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": claim.spec.access_modes,
                "storageClassName": claim.spec.storage_class_name or "",
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": claim.metadata.namespace, "name": claim.metadata.name,
                             "uid": claim.metadata.uid},
                **source,
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": where}]}},
            },
        }

    def _directory(self, path: str) -> Path:
        """A volume's directory, only if it is one this provisioner made (never anything else)."""
        assert self.real_node is not None
        directory = Path(path)
        if directory.parent != self.real_node[1] / "volumes":
            raise ValueError(f"{path} is not a volume of the real node")
        return directory
