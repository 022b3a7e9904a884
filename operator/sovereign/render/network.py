"""Network: a default-deny egress NetworkPolicy for the stack's pods.

Selecting every pod labelled with the stack and listing ``Egress`` denies all egress except what
the rules allow: DNS (port 53, to pods in any namespace, where cluster DNS runs), every pod of
the stack's own namespace, and the declared ``residency.egress.allowCIDRs`` (in-country object
store endpoints, registries). Pure; called by ``render.stack``.
"""

from __future__ import annotations

from typing import Any

from sovereign.api import SovereignStack
from sovereign.render import names
from sovereign.render.names import Component


def render_network_policy(*, stack: SovereignStack) -> list[dict[str, Any]]:
    egress: list[dict[str, Any]] = [
        {
            "to": [{"namespaceSelector": {}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {"to": [{"podSelector": {}}]},
    ]
    cidrs = stack.spec.residency.egress.allow_cidrs
    if cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in sorted(cidrs)]})
    name = names.stack_name(stack)
    return [
        names.stamped({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": names.metadata(
                stack, name=names.network_policy_name(stack), component=Component.NETWORK, entry=name
            ),
            "spec": {
                "podSelector": {"matchLabels": {names.STACK_LABEL: name}},
                "policyTypes": ["Egress"],
                "egress": egress,
            },
        })
    ]
