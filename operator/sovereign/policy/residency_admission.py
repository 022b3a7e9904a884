"""Residency rules as admission policies the kube-apiserver evaluates itself (CEL), and their parameters.

Every residency rule that can be decided from the admitted object and a per-namespace parameter
is a ValidatingAdmissionPolicy or MutatingAdmissionPolicy built here, so it holds with no network
hop and whether or not the operator runs; only what needs a lookup (the node a pod names or is
bound to, the class or volume of a claim) is left to the operator's lean webhook
(``services.admission``). What is built:

- ``namespace_metadata``: the parameters of one governed namespace, which the operator keeps in
  step with the namespace's stacks: annotations ``sovereign.ai/residency-*`` (regions, who governs,
  the exposures and host namespaces they allow) and the labels ``sovereign.ai/governed`` and
  ``sovereign.ai/enforcement``. The Namespace is the parameter object: the policies read it as
  ``namespaceObject``, so no ``paramKind`` is needed (one of ConfigMaps would need read access to
  every ConfigMap of the cluster), and labels and parameters change together in one write;
- ``admission_policies``: the policies and their bindings, cluster-wide and the same for every
  namespace:

  - ``sovereign-residency-region-affinity`` (mutating, Pod create): adds the required node
    affinity ``topology.kubernetes.io/region In <regions>`` to each node selector term that could
    land outside (a pod that names a region outside is left alone: it is denied or recorded);
  - ``sovereign-residency-workloads`` (validating): Pods and the pod templates of Deployments,
    StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs: ``PodOutsideRegions`` (a node
    selector or required affinity names a region or zone outside), ``HostNamespacesNotAllowed``
    (hostNetwork, hostPID, hostIPC), and for Pods ``PodNotPinnedToRegions``; a workload is judged
    itself, so the person applying it sees the denial rather than a ``FailedCreate``;
  - ``sovereign-residency-services`` (validating): LoadBalancer, NodePort, externalIPs, ExternalName;
  - ``sovereign-residency-governance`` (validating): only the operator may set,
    change or remove a namespace's ``sovereign.ai/governed`` and ``sovereign.ai/enforcement``
    labels or its ``sovereign.ai/residency-*`` annotations.

  The workload and Service policies have two bindings each, chosen by the namespace's
  ``sovereign.ai/enforcement`` label: ``...-enforce`` (``validationActions: [Deny]``) and
  ``...-audit`` (``[Warn, Audit]``: admitted, with the denial's text as a warning and an audit
  annotation). Bindings match only namespaces labelled ``sovereign.ai/governed=true``: nothing
  else is evaluated. A governed namespace without its parameters refuses everything.

Messages are the ones ``policy.residency`` words (``<Kind> <ns>/<name> breaks <Rule>: <detail>;
the allowed regions of <governor> are <regions>``). Updates are judged only when the fields a rule
reads changed. Pure: no I/O. Called by ``services.admission`` (the operator applies the policies
at start and a namespace's parameters on every change of its stacks) and ``sovereign_dev.chart`` (the chart ships the
policies, so they are in force before the operator first runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sovereign.policy.residency import (
    EXTERNAL_IPS_NOT_ALLOWED,
    EXTERNAL_NAME_NOT_ALLOWED,
    GOVERNANCE_TAMPERED,
    HOST_NAMESPACES_NOT_ALLOWED,
    LOAD_BALANCER_NOT_ALLOWED,
    NODE_PORT_NOT_ALLOWED,
    POD_NOT_PINNED,
    POD_OUTSIDE_REGIONS,
    Scope,
)
from sovereign.render.names import ENFORCEMENT_LABEL, GOVERNED_LABEL, REGION_LABEL

ADMISSION_API = "admissionregistration.k8s.io/v1"
#: Annotations of a governed namespace that hold its residency parameters.
REGIONS_ANNOTATION = "sovereign.ai/residency-regions"
GOVERNOR_ANNOTATION = "sovereign.ai/residency-governor"
LOAD_BALANCER_ANNOTATION = "sovereign.ai/residency-allow-load-balancer"
NODE_PORT_ANNOTATION = "sovereign.ai/residency-allow-node-port"
HOST_NAMESPACES_ANNOTATION = "sovereign.ai/residency-allow-host-namespaces"
PARAMETERS = (REGIONS_ANNOTATION, GOVERNOR_ANNOTATION, LOAD_BALANCER_ANNOTATION, NODE_PORT_ANNOTATION,
              HOST_NAMESPACES_ANNOTATION)
_PARAMETER_PREFIX = "sovereign.ai/residency-"
PREFIX = "sovereign-residency"
AFFINITY_POLICY = f"{PREFIX}-region-affinity"
WORKLOAD_POLICY = f"{PREFIX}-workloads"
SERVICE_POLICY = f"{PREFIX}-services"
GOVERNANCE_POLICY = f"{PREFIX}-governance"
ENFORCE, AUDIT = "Enforce", "Audit"
#: Validation actions per enforcement mode.
ACTIONS = {ENFORCE: ["Deny"], AUDIT: ["Warn", "Audit"]}
_LABELS = {"app.kubernetes.io/managed-by": "sovereign-operator", "app.kubernetes.io/part-of": "sovereign-stack"}

#: Workload kinds whose pod template is judged at the workload: (group, plural, path to the pod spec).
WORKLOADS = (
    ("apps", "deployments", "object.spec.template.spec"),
    ("apps", "statefulsets", "object.spec.template.spec"),
    ("apps", "daemonsets", "object.spec.template.spec"),
    ("apps", "replicasets", "object.spec.template.spec"),
    ("batch", "jobs", "object.spec.template.spec"),
    ("batch", "cronjobs", "object.spec.jobTemplate.spec.template.spec"),
)


def namespace_metadata(*, scope: Scope | None) -> dict[str, dict[str, str | None]]:
    """The operator's labels and annotations on a namespace that ``scope`` governs (the strictest
    rules of its stacks: ``policy.residency.scope_for`` with no labels); None: not governed, every
    one of them removed (a None value removes a key in a JSON merge patch). Values are strings;
    the regions are comma-separated and sorted."""
    if scope is None:
        return {"labels": {GOVERNED_LABEL: None, ENFORCEMENT_LABEL: None},
                "annotations": {key: None for key in PARAMETERS}}
    return {
        "labels": {GOVERNED_LABEL: "true", ENFORCEMENT_LABEL: ENFORCE if scope.enforce else AUDIT},
        "annotations": {
            REGIONS_ANNOTATION: ",".join(scope.regions),
            GOVERNOR_ANNOTATION: scope.governor,
            LOAD_BALANCER_ANNOTATION: _flag(scope.allow_load_balancer),
            NODE_PORT_ANNOTATION: _flag(scope.allow_node_port),
            HOST_NAMESPACES_ANNOTATION: _flag(scope.allow_host_namespaces),
        },
    }


def admission_policies(*, operator_users: Sequence[str]) -> list[dict[str, Any]]:
    """Every policy and binding, policies first (a binding names its policy).

    ``operator_users``: the user names the apiserver knows the operator by (its ServiceAccount's
    ``system:serviceaccount:<ns>:<name>``), the only ones allowed to change the governance labels
    and parameters.
    """
    if not operator_users:
        raise ValueError("the governance policy needs the operator's user name (operator_users)")
    policies = [_affinity_policy(), _workload_policy(), _service_policy(), _governance_policy(operator_users)]
    bindings = [_binding(AFFINITY_POLICY, mutating=True, mode=None)]
    bindings += [_binding(name, mutating=False, mode=mode) for name in (WORKLOAD_POLICY, SERVICE_POLICY)
                 for mode in (ENFORCE, AUDIT)]
    bindings.append(_binding(GOVERNANCE_POLICY, mutating=False, mode=None))
    return policies + bindings


# --- CEL building blocks ---------------------------------------------------------------------------

# Keys naming a region or a zone, as ``policy.residency`` reads them: ``<anything>/region`` or ``/zone``.
_REGION_KEY = "({k} == 'region' || {k}.endsWith('/region'))"
_ZONE_KEY = "({k} == 'zone' || {k}.endsWith('/zone'))"


def _inside(key: str, value: str) -> str:
    """CEL: the place ``key=value`` lies in the allowed regions (a zone by its region's prefix);
    a key that is neither a region nor a zone says nothing, so it is inside."""
    return (f"({_REGION_KEY.format(k=key)} ? {value} in variables.regions : "
            f"{_ZONE_KEY.format(k=key)} ? variables.regions.exists(r, {value}.startsWith(r)) : true)")


def _topological(key: str) -> str:
    return f"({_REGION_KEY.format(k=key)} || {_ZONE_KEY.format(k=key)})"


def _required_terms(spec: str) -> str:
    return (f"{spec}.?affinity.?nodeAffinity.?requiredDuringSchedulingIgnoredDuringExecution"
            f".?nodeSelectorTerms.orValue([])")


def _term_pinned(term: str) -> str:
    """CEL: a node selector term that keeps a pod inside (a region or zone ``In`` all inside)."""
    return (f"{term}.?matchExpressions.orValue([]).exists(e, e.operator == 'In' && {_topological('e.key')} "
            f"&& e.values.size() > 0 && e.values.all(v, {_inside('e.key', 'v')}))")


def _common_variables(spec: str) -> list[dict[str, str]]:
    """Variables every pod-spec rule reads: the allowed regions, the pod spec, the placements outside."""
    return [
        *_parameter_variables(),
        {"name": "spec", "expression": spec},
        {"name": "selectorOutside", "expression": (
            "variables.spec.?nodeSelector.orValue({}).filter(k, "
            f"!{_inside('k', 'variables.spec.nodeSelector[k]')})"
            ".map(k, 'nodeSelector ' + k + '=' + variables.spec.nodeSelector[k] + ' places it in ' "
            "+ variables.spec.nodeSelector[k])")},
        {"name": "affinityOutside", "expression": (
            f"{_required_terms('variables.spec')}.map(t, t.?matchExpressions.orValue([])"
            ".filter(e, e.operator == 'In')"
            f".map(e, e.values.filter(v, !{_inside('e.key', 'v')})"
            ".map(v, 'node affinity ' + e.key + '=' + v + ' places it in ' + v))"
            ".flatten()).flatten()")},
        {"name": "outside", "expression": "variables.selectorOutside + variables.affinityOutside"},
        {"name": "hostNamespaces", "expression": (
            "['hostNetwork', 'hostPID', 'hostIPC'].filter(f, "
            "(f == 'hostNetwork' && variables.spec.?hostNetwork.orValue(false)) || "
            "(f == 'hostPID' && variables.spec.?hostPID.orValue(false)) || "
            "(f == 'hostIPC' && variables.spec.?hostIPC.orValue(false)))")},
        {"name": "name", "expression": (
            "object.metadata.?name.orValue('') != '' ? object.metadata.name : "
            "object.metadata.?generateName.orValue('') + '*'")},
        {"name": "breaks", "expression": (
            "object.kind + ' ' + object.metadata.?namespace.orValue(request.namespace) + '/' + variables.name "
            "+ ' breaks '")},
        {"name": "allowed", "expression": (
            "'; the allowed regions of ' + variables.governor + ' are ' + "
            "(variables.regions.size() > 0 ? variables.regions.join(', ') : 'none (the stacks share no region)')")},
    ]


def _parameter_variables() -> list[dict[str, str]]:
    """The namespace's parameters, from its annotations."""
    def annotation(key: str, default: str) -> str:
        return f"namespaceObject.metadata.?annotations.orValue({{}})[?'{key}'].orValue('{default}')"

    return [
        {"name": "configured", "expression": f"{annotation(REGIONS_ANNOTATION, '')} != ''"},
        {"name": "regions", "expression": f"{annotation(REGIONS_ANNOTATION, '')}.split(',').filter(r, r != '')"},
        {"name": "governor", "expression": annotation(GOVERNOR_ANNOTATION, "no stack")},
        {"name": "allowLoadBalancer", "expression": f"{annotation(LOAD_BALANCER_ANNOTATION, 'false')} == 'true'"},
        {"name": "allowNodePort", "expression": f"{annotation(NODE_PORT_ANNOTATION, 'false')} == 'true'"},
        {"name": "allowHostNamespaces",
         "expression": f"{annotation(HOST_NAMESPACES_ANNOTATION, 'false')} == 'true'"},
    ]


#: Refuses everything in a governed namespace without parameters (the operator writes both at once).
_CONFIGURED = {
    "expression": "variables.configured",
    "reason": "Forbidden",
    "messageExpression": (
        "'namespace ' + namespaceObject.metadata.name + ' is governed (sovereign.ai/governed=true) but has no "
        f"residency parameters (annotation {REGIONS_ANNOTATION}), so nothing is admitted there: the sovereign "
        "operator writes both; check that it runs'"),
}


def _message(rule: str, detail: str) -> str:
    return f"variables.breaks + '{rule}: ' + {detail} + variables.allowed"


# --- the policies ----------------------------------------------------------------------------------

def _policy(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": ADMISSION_API, "kind": kind, "metadata": {"name": name, "labels": dict(_LABELS)},
            "spec": spec}


def _rule(group: str, plurals: Sequence[str], operations: Sequence[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "apiVersions": ["v1"], "resources": list(plurals), "operations": list(operations)}


def _affinity_policy() -> dict[str, Any]:
    required = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"
    term_type = "Object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    requirement = (f"{term_type}.matchExpressions{{key: '{REGION_LABEL}', operator: 'In', "
                   "values: variables.regions}")
    required_value = (f"Object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                      f"{{nodeSelectorTerms: [{term_type}{{matchExpressions: [{requirement}]}}]}}")
    node_affinity = (f"Object.spec.affinity.nodeAffinity{{requiredDuringSchedulingIgnoredDuringExecution: "
                     f"{required_value}}}")
    # Terms are alternatives: each one that could land outside gets the region requirement, by
    # index (the list is atomic, so an apply configuration could only replace it whole).
    per_term = (
        f"{_required_terms('object.spec')}.transformList(i, t, !{_term_pinned('t')}, "
        f"has(t.matchExpressions) ? JSONPatch{{op: 'add', path: '{required}/nodeSelectorTerms/' + string(i) "
        f"+ '/matchExpressions/-', value: {requirement}}} : JSONPatch{{op: 'replace', "
        f"path: '{required}/nodeSelectorTerms/' + string(i), "
        f"value: {term_type}{{matchFields: t.matchFields, matchExpressions: [{requirement}]}}}})")
    patch = (
        "!has(object.spec.affinity) ? [JSONPatch{op: 'add', path: '/spec/affinity', "
        f"value: Object.spec.affinity{{nodeAffinity: {node_affinity}}}}}] : "
        "!has(object.spec.affinity.nodeAffinity) ? [JSONPatch{op: 'add', path: '/spec/affinity/nodeAffinity', "
        f"value: {node_affinity}}}] : "
        "!has(object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution) ? "
        f"[JSONPatch{{op: 'add', path: '{required}', value: {required_value}}}] : {per_term}")
    # Only a pod that may need the pin reaches the patch (typed JSON patch: the costly part of a
    # mutating policy): one whose node selector names no region or zone and that has no required
    # affinity, or a term without a region or zone ``In``. Match conditions see the object only
    # (not the namespace's regions), so this is decided by shape; the patch itself checks the
    # rest. A pod naming a place outside is left as written: pinning it would make it
    # unschedulable instead of visible (denied in Enforce, recorded in Audit).
    terms = _required_terms("object.spec")
    shape = (f"!object.spec.?nodeSelector.orValue({{}}).exists(k, {_topological('k')}) && "
             f"({terms}.size() == 0 || {terms}.exists(t, !t.?matchExpressions.orValue([]).exists(e, "
             f"e.operator == 'In' && {_topological('e.key')})))")
    return _policy("MutatingAdmissionPolicy", AFFINITY_POLICY, {
        "matchConstraints": {"resourceRules": [_rule("", ["pods"], ["CREATE"])]},
        "matchConditions": [{"name": "may-need-the-region", "expression": shape}],
        "variables": [v for v in _common_variables("object.spec")
                      if v["name"] in ("configured", "regions", "spec", "selectorOutside", "affinityOutside",
                                       "outside")]
                     + [{"name": "pinned", "expression": _pinned("object.spec")}],
        "mutations": [{"patchType": "JSONPatch", "jsonPatch": {
            "expression": f"!variables.configured || variables.outside.size() > 0 || variables.pinned || "
                          f"variables.regions.size() == 0 ? [] : {patch}"}}],
        "failurePolicy": "Fail",
        # Another mutation may rewrite the affinity after this one; run again if it does.
        "reinvocationPolicy": "IfNeeded",
    })


def _pinned(spec: str) -> str:
    """CEL: the pod's own constraints keep it inside (a node selector or every required term)."""
    terms = _required_terms(spec)
    return (f"{spec}.?nodeSelector.orValue({{}}).exists(k, {_topological('k')} && "
            f"{_inside('k', spec + '.nodeSelector[k]')}) || "
            f"({terms}.size() > 0 && {terms}.all(t, {_term_pinned('t')}))")





def _workload_policy() -> dict[str, Any]:
    spec = "object.kind == 'Pod' ? object.spec : " + " : ".join(
        f"object.kind == '{_kind(plural)}' ? {path}" for _, plural, path in WORKLOADS) + " : object.spec"
    old_spec = spec.replace("object.", "oldObject.")
    placement = ("{s}.?nodeSelector.orValue({{}}) == {o}.?nodeSelector.orValue({{}}) && "
                 "{s}.?affinity.orValue({{}}) == {o}.?affinity.orValue({{}}) && "
                 "{s}.?hostNetwork.orValue(false) == {o}.?hostNetwork.orValue(false) && "
                 "{s}.?hostPID.orValue(false) == {o}.?hostPID.orValue(false) && "
                 "{s}.?hostIPC.orValue(false) == {o}.?hostIPC.orValue(false)")
    template = "object.kind == 'Pod' ? '' : 'its pod template\\'s '"
    return _policy("ValidatingAdmissionPolicy", WORKLOAD_POLICY, {
        "matchConstraints": {"resourceRules": [_rule("", ["pods"], ["CREATE", "UPDATE"])] + [
            _rule(group, [plural for g, plural, _ in WORKLOADS if g == group], ["CREATE", "UPDATE"])
            for group in ("apps", "batch")]},
        "variables": [*_common_variables(f"({spec})"),
                      {"name": "oldSpec", "expression": f"({old_spec})"},
                      {"name": "unchanged", "expression": (
                          f"request.operation == 'UPDATE' && ({placement.format(s='variables.spec', o='variables.oldSpec')})")},
                      {"name": "template", "expression": template}],
        "validations": [
            _CONFIGURED,
            {"expression": "variables.unchanged || variables.outside.size() == 0",
             "reason": "Forbidden",
             "messageExpression": _message(POD_OUTSIDE_REGIONS, "variables.template + variables.outside.join('; ' "
                                                                "+ variables.template)")},
            {"expression": "variables.unchanged || variables.hostNamespaces.size() == 0 || "
                           "variables.allowHostNamespaces",
             "reason": "Forbidden",
             "messageExpression": _message(
                 HOST_NAMESPACES_NOT_ALLOWED,
                 "variables.template + variables.hostNamespaces.join(', ') + ' puts it in the node\\'s own "
                 "namespaces, outside the egress policy and the pod boundary; set "
                 "spec.residency.egress.allowHostNamespaces to allow it'")},
            {"expression": ("variables.unchanged || object.kind != 'Pod' || has(object.spec.nodeName) || "
                            f"variables.outside.size() > 0 || {_pinned('object.spec')}"),
             "reason": "Forbidden",
             "messageExpression": _message(
                 POD_NOT_PINNED, f"'it may be scheduled outside them: give it a required node affinity "
                                 f"{REGION_LABEL} In the allowed regions'")},
        ],
        "failurePolicy": "Fail",
    })


def _kind(plural: str) -> str:
    return {"deployments": "Deployment", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet",
            "replicasets": "ReplicaSet", "jobs": "Job", "cronjobs": "CronJob"}[plural]


def _service_policy() -> dict[str, Any]:
    unchanged = ("request.operation == 'UPDATE' && object.spec.?type == oldObject.spec.?type && "
                 "object.spec.?externalIPs.orValue([]) == oldObject.spec.?externalIPs.orValue([]) && "
                 "object.spec.?externalName == oldObject.spec.?externalName")
    kind = "object.spec.?type.orValue('ClusterIP')"
    return _policy("ValidatingAdmissionPolicy", SERVICE_POLICY, {
        "matchConstraints": {"resourceRules": [_rule("", ["services"], ["CREATE", "UPDATE"])]},
        "variables": [v for v in _common_variables("object.spec")
                      if v["name"] not in ("spec", "selectorOutside", "affinityOutside", "outside", "hostNamespaces")]
                     + [{"name": "unchanged", "expression": unchanged}],
        "validations": [
            _CONFIGURED,
            {"expression": f"variables.unchanged || {kind} != 'LoadBalancer' || variables.allowLoadBalancer",
             "reason": "Forbidden",
             "messageExpression": _message(LOAD_BALANCER_NOT_ALLOWED, (
                 "'type LoadBalancer may publish it beyond the jurisdiction; "
                 "set spec.residency.exposure.allowLoadBalancer to allow it'"))},
            {"expression": f"variables.unchanged || {kind} != 'NodePort' || variables.allowNodePort",
             "reason": "Forbidden",
             "messageExpression": _message(NODE_PORT_NOT_ALLOWED, (
                 "'type NodePort opens a port on every node; set spec.residency.exposure.allowNodePort to allow it'"))},
            {"expression": "variables.unchanged || object.spec.?externalIPs.orValue([]).size() == 0",
             "reason": "Forbidden",
             "messageExpression": _message(EXTERNAL_IPS_NOT_ALLOWED, (
                 "'externalIPs ' + object.spec.externalIPs.join(', ') + ' route outside traffic into the "
                 "namespace, which no residency field declares'"))},
            {"expression": f"variables.unchanged || {kind} != 'ExternalName'",
             "reason": "Forbidden",
             "messageExpression": _message(EXTERNAL_NAME_NOT_ALLOWED, (
                 "'type ExternalName sends traffic to ' + object.spec.?externalName.orValue('') + ', outside the "
                 "declared egress: reach it through spec.residency.egress.allowCIDRs instead'"))},
        ],
        "failurePolicy": "Fail",
    })


def _governance_policy(operator_users: Sequence[str]) -> dict[str, Any]:
    users = "[" + ", ".join(f"'{user}'" for user in operator_users) + "]"
    labels = f"['{GOVERNED_LABEL}', '{ENFORCEMENT_LABEL}']"
    return _policy("ValidatingAdmissionPolicy", GOVERNANCE_POLICY, {
        "matchConstraints": {"resourceRules": [_rule("", ["namespaces"], ["CREATE", "UPDATE"])]},
        "matchConditions": [{"name": "not-the-operator", "expression": f"!(request.userInfo.username in {users})"}],
        "variables": [
            {"name": "before", "expression": "oldObject == null ? {} : oldObject.metadata.?labels.orValue({})"},
            {"name": "after", "expression": "object.metadata.?labels.orValue({})"},
            {"name": "notesBefore",
             "expression": "oldObject == null ? {} : oldObject.metadata.?annotations.orValue({})"},
            {"name": "notesAfter", "expression": "object.metadata.?annotations.orValue({})"},
            {"name": "changed", "expression": (
                f"{labels}.filter(l, variables.before[?l] != variables.after[?l]) + "
                f"variables.notesBefore.filter(k, k.startsWith('{_PARAMETER_PREFIX}') && "
                "variables.notesBefore[?k] != variables.notesAfter[?k]) + "
                f"variables.notesAfter.filter(k, k.startsWith('{_PARAMETER_PREFIX}') && !(k in variables.notesBefore))")},
        ],
        "validations": [
            {"expression": "variables.changed.size() == 0",
             "reason": "Forbidden",
             "messageExpression": (
                 f"'Namespace ' + request.name + ' breaks {GOVERNANCE_TAMPERED}: ' + variables.changed.join(', ') + "
                 "' belong to the sovereign operator: it sets them while a SovereignStack governs the namespace and "
                 "removes them with the last one; to lift residency enforcement, delete the namespace\\'s stacks "
                 "(see docs/residency.md)'")},
        ],
        "failurePolicy": "Fail",
    })


def _binding(policy: str, *, mutating: bool, mode: str | None) -> dict[str, Any]:
    selector: dict[str, Any] = {"matchLabels": {GOVERNED_LABEL: "true"}}
    if mode:
        selector["matchLabels"][ENFORCEMENT_LABEL] = mode
    spec: dict[str, Any] = {"policyName": policy}
    if policy != GOVERNANCE_POLICY:
        spec["matchResources"] = {"namespaceSelector": selector}
    if not mutating:
        spec["validationActions"] = ACTIONS[mode or ENFORCE]
    kind = "MutatingAdmissionPolicyBinding" if mutating else "ValidatingAdmissionPolicyBinding"
    return {"apiVersion": ADMISSION_API, "kind": kind,
            "metadata": {"name": f"{policy}-{mode.lower()}" if mode else policy, "labels": dict(_LABELS)}, "spec": spec}


def _flag(value: bool) -> str:
    return "true" if value else "false"
