"""Pure builders: (stack spec, cluster facts) -> desired Kubernetes objects.

No I/O and deterministic output; one module per child kind. Called by ``services``.
"""
