"""A simulated dynamic volume provisioner for the local cluster, which has no storage driver.

Every pending PersistentVolumeClaim gets a PersistentVolume made for it (pre-bound through
``claimRef``, the way a CSI provisioner binds), sized as requested and pinned by node affinity
to the region the provisioner serves; volumes whose claim is gone are deleted, as a ``Delete``
reclaim policy would. KWOK runs no containers, so the volumes hold nothing.

Run as a thread by ``devenv.DevEnvironment`` (``sovereign dev up``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from sovereign_dev.fleet import REGION_LABEL

log = logging.getLogger(__name__)
PROVISIONED_BY = "sovereign.ai/simulated-provisioner"


class SimulatedProvisioner:
    def __init__(self, api: client.ApiClient, *, region: str, interval: float = 1.0) -> None:
        self.core = client.CoreV1Api(api)
        self.region = region
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-provisioner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

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

    def volume_for(self, claim: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": f"pv-{claim.metadata.uid}", "labels": {PROVISIONED_BY: "true"}},
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": claim.spec.access_modes,
                "storageClassName": claim.spec.storage_class_name or "",
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": claim.metadata.namespace, "name": claim.metadata.name,
                             "uid": claim.metadata.uid},
                "hostPath": {"path": f"/var/lib/sovereign-dev/{claim.metadata.uid}"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": REGION_LABEL, "operator": "In", "values": [self.region]}]}]}},
            },
        }
