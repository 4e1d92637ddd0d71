"""The chart's RBAC grants exactly what the operator uses: no Secrets, no wildcards, namespaced when asked,
and the leader-election Lease by name in the release namespace only."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from e2e.chart_support import Helm, Manifest, of_kind, one
from kubeforge.k8s import resources as r
from tests.chart.conftest import VALUE_SETS

WRITE = frozenset({"get", "list", "watch", "create", "patch", "delete"})
READ = frozenset({"get", "list", "watch"})

# What the operator does with each resource it knows (kubeforge.k8s.resources), by (group, plural).
OPERATOR_USES: dict[r.Resource, frozenset[str]] = {
    r.MODEL_DEPLOYMENT: READ | {"create", "patch"},  # train -> serve hand-off: server-side apply
    r.TRAINING_JOB: READ,
    r.DEPLOYMENT: WRITE,
    r.SERVICE: WRITE,
    r.POD: READ,
    r.EVENT: frozenset({"create", "patch", "list"}),  # list: a Job's FailedCreate Events
    r.NAMESPACE: frozenset(),  # declared in kubeforge.k8s.resources, but no operator code calls it
    r.JOB: WRITE,
    r.PVC: WRITE,  # the model cache's claim (spec.cache.size)
    r.PDB: WRITE,
    r.NETWORK_POLICY: WRITE,
    r.HPA: WRITE,
    r.SCALED_OBJECT: WRITE,  # rbac.keda
    r.SERVICE_MONITOR: WRITE,  # rbac.prometheusOperator
    r.LEADER_WORKER_SET: WRITE,  # multi-node replicas
    r.HTTP_ROUTE: WRITE,  # a canary split by a Gateway
    r.LEASE: frozenset(),  # not in these rules: the leader-election Role (LEASE_RULES) grants it
}
LEASE_ROLE = "kubeforge-leader-election"
# What controllers/leader.py does with its Lease: GET it, POST it when absent, PUT it (renew, take
# over, release). A POST's URL names no object, so `create` cannot be restricted by resourceNames.
LEASE_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["kubeforge-leader"],
        "verbs": ["get", "update"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]
SUBRESOURCES: dict[tuple[str, str], frozenset[str]] = {
    ("kubeforge.io", "modeldeployments/status"): frozenset({"get", "patch", "update"}),
    ("kubeforge.io", "trainingjobs/status"): frozenset({"get", "patch", "update"}),
    # the serving Deployment's replicas while a model cache of new sources fills
    ("apps", "deployments/scale"): frozenset({"patch"}),
    ("leaderworkerset.x-k8s.io", "leaderworkersets/scale"): frozenset({"patch"}),
    # blockOwnerDeletion on the children's owner references (OwnerReferencesPermissionEnforcement)
    ("kubeforge.io", "modeldeployments/finalizers"): frozenset({"update"}),
    ("kubeforge.io", "trainingjobs/finalizers"): frozenset({"update"}),
}


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants[(group, resource)] |= set(rule["verbs"])
    return dict(grants)


def _expected(keda: bool = True, monitoring: bool = True) -> dict[tuple[str, str], set[str]]:
    expected = {(res.group, res.plural): set(verbs) for res, verbs in OPERATOR_USES.items() if verbs}
    expected |= {key: set(verbs) for key, verbs in SUBRESOURCES.items()}
    if not keda:
        del expected[(r.SCALED_OBJECT.group, r.SCALED_OBJECT.plural)]
    if not monitoring:
        del expected[(r.SERVICE_MONITOR.group, r.SERVICE_MONITOR.plural)]
    return expected


USER_ROLES = ("kubeforge-view", "kubeforge-edit", "kubeforge-admin")


def _operator_manifests(manifests: list[Manifest]) -> list[Manifest]:
    """The chart's objects less the ClusterRoles for the people who use the CRDs (userroles.yaml)."""
    return [m for m in manifests if not (m["kind"] == "ClusterRole" and m["metadata"]["name"] in USER_ROLES)]


def _all_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    """The rules of every Role/ClusterRole the operator runs with (the user roles apart)."""
    return [
        rule
        for m in _operator_manifests(manifests)
        if m["kind"] in ("Role", "ClusterRole")
        for rule in m["rules"]
    ]


def _operator_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    """The rules of every Role/ClusterRole but the leader-election Role."""
    return [
        rule
        for m in _operator_manifests(manifests)
        if m["kind"] in ("Role", "ClusterRole") and m["metadata"]["name"] != LEASE_ROLE
        for rule in m["rules"]
    ]


def _lease_role(manifests: list[Manifest], kind: str = "Role") -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == LEASE_ROLE]
    assert len(found) == 1, f"expected one {kind} {LEASE_ROLE}, got {len(found)}"
    return found[0]


def test_every_resource_the_operator_knows_is_accounted_for() -> None:
    known = {v for v in vars(r).values() if isinstance(v, r.Resource)}
    assert known == set(OPERATOR_USES), (
        "a resource was added to kubeforge.k8s.resources: grant it in the chart"
    )


def test_cluster_scope_grants_exactly_what_the_operator_uses(rendered: dict[str, list[Manifest]]) -> None:
    manifests = _operator_manifests(rendered["default"])
    role = one(manifests, "ClusterRole")
    # kopf's cluster scanning is off (handlers.startup): no namespaces, no CRDs
    assert _grants(role["rules"]) == _expected()
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kubeforge",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubeforge", "namespace": "kubeforge-system"}
    ]
    # the only Role is the leader-election one
    assert [m["metadata"]["name"] for m in of_kind(manifests, "Role")] == [LEASE_ROLE]
    assert [m["metadata"]["name"] for m in of_kind(manifests, "RoleBinding")] == [LEASE_ROLE]


def test_namespaced_mode_has_no_cluster_wide_grant(rendered: dict[str, list[Manifest]]) -> None:
    manifests = _operator_manifests(rendered["namespaced"])
    assert not of_kind(manifests, "ClusterRole")
    assert not of_kind(manifests, "ClusterRoleBinding")
    roles = {
        m["metadata"]["namespace"]: m
        for m in of_kind(manifests, "Role")
        if m["metadata"]["name"] != LEASE_ROLE
    }
    bindings = {
        m["metadata"]["namespace"]: m
        for m in of_kind(manifests, "RoleBinding")
        if m["metadata"]["name"] != LEASE_ROLE
    }
    assert set(roles) == set(bindings) == {"a", "b"}
    for namespace, role in roles.items():
        assert _grants(role["rules"]) == _expected(), namespace
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "kubeforge",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubeforge", "namespace": "kubeforge-system"}
        ]


@pytest.mark.parametrize(("keda", "monitoring"), [(False, True), (True, False), (False, False)])
def test_optional_integrations_follow_their_toggles(helm: Helm, keda: bool, monitoring: bool) -> None:
    for watch in ([], ["a"]):
        manifests = helm.template(
            {
                "watchNamespaces": watch,
                "rbac": {"create": True, "keda": keda, "prometheusOperator": monitoring},
            }
        )
        grants = _grants(_operator_rules(manifests))
        assert grants == _expected(keda, monitoring)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_secrets_and_no_wildcards(rendered: dict[str, list[Manifest]], name: str) -> None:
    rules = _all_rules(rendered[name])
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert not any("*" in value for value in rule[field]), rule
        assert not {"secrets", "configmaps", "serviceaccounts/token"} & set(rule["resources"]), rule
        # nothing that grants more access: RBAC objects, impersonation, escalation, node or namespace control
        assert not {"rbac.authorization.k8s.io", "authentication.k8s.io", "certificates.k8s.io"} & set(
            rule["apiGroups"]
        ), rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        assert not {"namespaces", "nodes", "pods/exec", "pods/attach", "pods/portforward"} & set(
            rule["resources"]
        ), rule


def test_pods_are_only_read(rendered: dict[str, list[Manifest]]) -> None:
    grants = _grants(_operator_rules(rendered["default"]))
    assert grants[("", "pods")] == READ
    assert not any(resource.startswith("pods/") for _, resource in grants)


def test_every_kind_the_informers_cache_is_listed_and_watched(rendered: dict[str, list[Manifest]]) -> None:
    """controllers/handlers.py lists and watches owners, children and (when served) optional children."""
    from kubeforge.controllers import handlers

    informed = [
        *handlers.OWNERS,
        *handlers.CHILDREN,
        *(resource for resource, _ in handlers.OPTIONAL_CHILDREN),
    ]
    for name in ("default", "namespaced"):
        grants = _grants(_operator_rules(rendered[name]))
        for resource in informed:
            assert {"list", "watch"} <= grants[(resource.group, resource.plural)], (name, resource.kind)
        assert "create" in grants[("", "events")], name


@pytest.mark.parametrize("name", ["default", "namespaced"])
def test_leader_election_role_grants_exactly_the_lease(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    manifests = rendered[name]
    role = _lease_role(manifests)
    assert role["metadata"]["namespace"] == "kubeforge-system"  # the release namespace, in both modes
    assert role["rules"] == LEASE_RULES
    binding = _lease_role(manifests, "RoleBinding")
    assert binding["metadata"]["namespace"] == "kubeforge-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubeforge", "namespace": "kubeforge-system"}
    ]
    # nowhere else: no Lease rule in the operator's ClusterRole or per-namespace Roles
    assert ("coordination.k8s.io", "leases") not in _grants(_operator_rules(manifests))


def _lease_arg(manifests: list[Manifest]) -> str:
    args: list[str] = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    (lease,) = [
        a.removeprefix("--leader-election-id=") for a in args if a.startswith("--leader-election-id=")
    ]
    return lease


@pytest.mark.parametrize(
    ("release", "values", "lease"),
    [
        ("kubeforge", {}, "kubeforge-leader"),
        ("ml", {}, "ml-kubeforge-leader"),  # two releases in one namespace never share a Lease
        ("kubeforge", {"leaderElection": {"leaseName": "platform-ml-leader"}}, "platform-ml-leader"),
    ],
)
def test_the_role_names_the_lease_the_operator_uses(
    helm: Helm, release: str, values: dict[str, Any], lease: str
) -> None:
    manifests = helm.template(values, release=release)
    role = next(m for m in of_kind(manifests, "Role") if m["metadata"]["name"].endswith("-leader-election"))
    assert role["rules"][0]["resourceNames"] == [lease]
    assert _lease_arg(manifests) == lease


def test_rbac_can_be_left_to_the_platform_team(helm: Helm) -> None:
    for watch in ([], ["a"]):
        manifests = helm.template(
            {"watchNamespaces": watch, "rbac": {"create": False, "keda": True, "prometheusOperator": True}}
        )
        assert not [
            m for m in manifests if m["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        ]


def test_user_roles_aggregate_into_the_built_in_roles_and_name_no_secret(
    rendered: dict[str, list[Manifest]],
) -> None:
    for mode in ("default", "namespaced"):
        roles = {m["metadata"]["name"]: m for m in of_kind(rendered[mode], "ClusterRole")}
        for name, level in zip(USER_ROLES, ("view", "edit", "admin"), strict=True):
            labels = roles[name]["metadata"]["labels"]
            assert labels[f"rbac.authorization.k8s.io/aggregate-to-{level}"] == "true"
            grants = _grants(roles[name]["rules"])
            assert {group for group, _ in grants} == {"kubeforge.io"}, grants  # nothing else, no Secret
        assert not [
            b for b in of_kind(rendered[mode], "ClusterRoleBinding") if b["roleRef"]["name"] in USER_ROLES
        ]
    view = _grants(roles["kubeforge-view"]["rules"])
    assert all(verbs <= READ for verbs in view.values())
    assert "create" in _grants(roles["kubeforge-edit"]["rules"])[("kubeforge.io", "modeldeployments")]
