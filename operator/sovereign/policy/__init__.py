"""Pure decisions (residency rules, GPU health rules), each returning ok, reason and message.

Reasons are CamelCase constants that feed Conditions verbatim. Called by ``services`` and the agent.
"""
