"""SovereignStack operator: one custom resource becomes a sovereign AI deployment.

The package is laid out in the four layers of the design (handlers -> services ->
render/policy/kube/stores/nvml -> api); ``cli`` is the ``sovereign`` command. The local cloud
used by the tests, the benchmarks and ``make dev`` is the separate package ``sovereign_dev``
beside this one in the repository; it is not part of the operator's distribution.
"""

__version__ = "0.1.0"
