"""Sample applications that run in the local cloud's containers (stdlib only, one file each).

``chat_client`` is the sample stack's application: it calls a model by its logical name, as
every application of a stack does. ``sovereign_dev.images`` packs it into the ``chat-client``
image; the e2e tests and ``make dev`` deploy it.
"""
