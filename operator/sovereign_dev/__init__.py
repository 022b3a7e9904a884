"""A real local Kubernetes control plane with simulated GPU nodes (KWOK), and MinIO servers.

Binaries are built from pinned Go modules (``gomods/``) into a cache outside the repository;
``cluster.DevCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
KWOK on loopback, creates the simulated fleet of ``fleet.yaml`` and installs the upstream CRDs.
The CPU engine is real too: ``build`` compiles llama.cpp's llama-server from a pinned source,
``tinymodel`` generates the project's own tiny GGUF models, ``engine`` runs the server on them and
seeds them into MinIO, ``images`` packs it as the image the operator renders. Used by the test
fixtures, the benchmarks and ``sovereign dev up``.
"""
