"""SovereignStack operator: one custom resource becomes a sovereign AI deployment.

The package is laid out in the four layers of the design (handlers -> services ->
render/policy/kube/stores/nvml -> api); ``devcluster`` is the local control plane used by
the tests, the benchmarks and ``sovereign dev up``; ``cli`` is the ``sovereign`` command.
"""

__version__ = "0.1.0"
