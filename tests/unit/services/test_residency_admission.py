"""The lookup webhook configuration the operator publishes, and the certificate it serves it with."""

from __future__ import annotations

from cryptography import x509
from sovereign.kube.admission import self_signed_certificate, webhook_configuration
from sovereign.services.admission import WEBHOOKS

URL_CONFIG = {"url": "https://127.0.0.1:9443", "caBundle": "Q0E="}


def by_name(configuration: dict) -> dict:
    return {hook["name"]: hook for hook in configuration["webhooks"]}


def test_lookup_webhooks_match_only_governed_namespaces_and_fail_closed_there():
    validating = webhook_configuration(webhooks=WEBHOOKS, client_config=URL_CONFIG)

    hooks = by_name(validating)
    assert list(hooks) == ["pod-node.sovereign.ai", "pod-binding.sovereign.ai", "claim-residency.sovereign.ai",
                           "stack-residency.sovereign.ai"]
    for name in ("pod-node.sovereign.ai", "pod-binding.sovereign.ai", "claim-residency.sovereign.ai"):
        assert hooks[name]["namespaceSelector"] == {"matchLabels": {"sovereign.ai/governed": "true"}}, name
        assert hooks[name]["failurePolicy"] == "Fail", name
    assert (validating["kind"], validating["metadata"]["name"]) == ("ValidatingWebhookConfiguration",
                                                                    "sovereign-residency")


def test_the_apiserver_calls_the_operator_only_for_what_needs_a_lookup():
    hooks = by_name(webhook_configuration(webhooks=WEBHOOKS, client_config=URL_CONFIG))

    names_a_node, = hooks["pod-node.sovereign.ai"]["matchConditions"]
    assert names_a_node["name"] == "names-a-node"
    for field in ("nodeName", "'kubernetes.io/hostname'", "'metadata.name'"):
        assert field in names_a_node["expression"]
    assert hooks["pod-node.sovereign.ai"]["rules"][0]["operations"] == ["CREATE"]
    # The scheduler binds only where the pod's region affinity (a policy's doing) lets it.
    assert hooks["pod-binding.sovereign.ai"]["rules"][0]["resources"] == ["pods/binding"]
    assert hooks["pod-binding.sovereign.ai"]["matchConditions"] == [
        {"name": "not-the-scheduler", "expression": "request.userInfo.username != 'system:kube-scheduler'"}]
    assert "matchConditions" not in hooks["claim-residency.sovereign.ai"]


def test_the_stack_webhook_sees_every_namespace_and_fails_open():
    validating = webhook_configuration(webhooks=WEBHOOKS, client_config=URL_CONFIG)

    stack = by_name(validating)["stack-residency.sovereign.ai"]

    assert (stack["namespaceSelector"], stack["failurePolicy"]) == ({}, "Ignore")
    assert stack["rules"] == [{"apiGroups": ["sovereign.ai"], "apiVersions": ["v1alpha1"],
                               "resources": ["sovereignstacks"], "operations": ["CREATE", "UPDATE"],
                               "scope": "Namespaced"}]


def test_each_webhook_is_routed_to_its_handler_by_url_or_service_path():
    by_url = webhook_configuration(webhooks=WEBHOOKS, client_config=URL_CONFIG)
    service_config = {"service": {"namespace": "sovereign-system", "name": "sovereign", "port": 443},
                      "caBundle": "Q0E="}
    by_service = webhook_configuration(webhooks=WEBHOOKS, client_config=service_config)

    assert by_name(by_url)["pod-node.sovereign.ai"]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/pod-node", "caBundle": "Q0E="}
    assert by_name(by_service)["claim-residency.sovereign.ai"]["clientConfig"] == {
        "service": {"namespace": "sovereign-system", "name": "sovereign", "port": 443, "path": "/claim-residency"},
        "caBundle": "Q0E="}


def test_the_self_signed_certificate_covers_the_addresses_and_names_it_is_given():
    cert_pem, key_pem = self_signed_certificate(["127.0.0.1", "sovereign.sovereign-system.svc", "127.0.0.1"])

    certificate = x509.load_pem_x509_certificate(cert_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["sovereign.sovereign-system.svc"]
    assert certificate.issuer == certificate.subject
    assert b"PRIVATE KEY" in key_pem
