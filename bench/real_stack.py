"""The stage of the real-node benchmarks: a cluster with a real node, an in-country MinIO, the
local cloud's volume provisioner (the real node's ReadWriteMany class included), the data-path
stack's namespace, images and bucket, and the operator as a ``sovereign run`` process.

``data_path_stage`` sets it all up for one model and tears it down; used by
``bench.first_token`` and ``bench.cache``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from kubernetes import client

from sovereign_dev import tinymodel
from sovereign_dev.cluster import DevCluster, wait_until
from sovereign_dev.datapath import DataPath, ModelResources
from sovereign_dev.fleet import REAL_NODE_REGION
from sovereign_dev.minio import MinioServer
from sovereign_dev.provisioner import SimulatedProvisioner
from sovereign_dev.scenario import OperatorProcess


@contextlib.contextmanager
def data_path_stage(*, work: Path, namespace: str, model: str, resources: ModelResources,
                    say: Callable[[str], None]) -> Iterator[DataPath]:
    """A ``DataPath`` for ``model`` in ``namespace``, prepared, with the operator watching it."""
    say(f"starting a cluster with a real node in {REAL_NODE_REGION}")
    with DevCluster(workdir=work / "cluster", progress=False, real_node=REAL_NODE_REGION) as cluster, \
            MinioServer(region=REAL_NODE_REGION, root=work / "minio", host=cluster.pod_reachable_host) as store:
        api = cluster.api_client()
        node = cluster.node
        assert node is not None, "DevCluster(real_node=...) has a real node"
        provisioner = SimulatedProvisioner(api, region=REAL_NODE_REGION, real_node=(node.name, node.node_dir),
                                           interval=0.5)
        provisioner.start()
        operator: OperatorProcess | None = None
        try:
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": namespace}})
            wait_until(lambda: core.read_namespaced_service_account("default", namespace), timeout=60)
            path = DataPath(cluster=cluster, api=api, namespace=namespace, store=store, models=(model,),
                            resources=resources, progress=False)
            say(f"importing the images, seeding {model} "
                f"({tinymodel.ensure(model).stat().st_size / 2**30:.2f} GiB) into the bucket")
            path.prepare()
            operator = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace],
                                       log=work / "operator.log", resync_seconds=30).start()
            yield path
        finally:
            if operator is not None:
                operator.stop()
            provisioner.stop()
            api.close()
