"""Use cases, one per module: reconcile a stack, audit residency, react to node health.

Called by ``handlers`` (Kopf) and the CLI; calls render, policy, kube, stores and nvml.
"""
