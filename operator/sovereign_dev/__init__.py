"""A real local Kubernetes control plane with simulated GPU nodes (KWOK), and MinIO servers.

Binaries are built from pinned Go modules (``gomods/``) into a cache outside the repository;
``cluster.DevCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
KWOK on loopback, creates the simulated fleet of ``fleet.yaml`` and installs the upstream CRDs.
Used by the test fixtures, the benchmarks and ``sovereign dev up``.
"""
