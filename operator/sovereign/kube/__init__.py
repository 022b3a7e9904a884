"""All Kubernetes I/O: server-side apply, prune, status patch, events, typed errors.

Called by ``services``; never by builders or policies.
"""
