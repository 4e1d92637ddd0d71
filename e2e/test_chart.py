"""The Helm chart against a real control plane: install, RBAC sufficient and not excessive, two replicas
with leader election and a failover, upgrade, uninstall.

The module starts its own cluster: the session's cluster has its own operator running with admin rights,
which would reconcile the same objects as the one here. The chart's operator Deployment runs on kwok's
simulated nodes (no container really runs); the operator under test runs locally as the chart's
ServiceAccount, with a token of that account and the installed Deployment's arguments (leader election
included), so every call it makes is authorized by the chart's RBAC.
The API server also runs the OwnerReferencesPermissionEnforcement admission plugin (as OpenShift does),
which checks the operator's right to set blockOwnerDeletion on its children.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.chart_support import Helm, can_i, service_account_kubeconfig
from e2e.cluster import REPO_ROOT, Cluster, own_cluster
from e2e.kube import Kubectl, create_namespaces, wait_condition, wait_established, wait_for
from e2e.operator_proc import OperatorProcess
from e2e.storage import bound_claim

pytestmark = pytest.mark.e2e

RELEASE = "kubeforge"
NAMESPACE = "kubeforge-system"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
SERVE_NS = "chart-serve"
TRAIN_NS = "chart-train"
OTHER_NS = "chart-other"
EXAMPLES = REPO_ROOT / "examples"
# No pod will pull it: the simulated nodes run nothing.
VALUES: dict[str, Any] = {
    "image": {"repository": "kubeforge.invalid/operator", "tag": "e2e"},
    "podDisruptionBudget": {"enabled": True},
}
CHART_KINDS = (
    "deployments",
    "services",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "networkpolicies",
    "poddisruptionbudgets",
)
DENIED = re.compile(r"\b403\b|forbidden", re.IGNORECASE)
# A log line starts with its time, milliseconds after a comma ("00:18:10,403"): never read as a status.
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
LEASE = f"{RELEASE}-leader"
LEASES = "leases.coordination.k8s.io"
# A standby only fills and keeps its cache, looks for the optional APIs and reads the Lease (Kube.calls verbs).
STANDBY_CALLS = frozenset({"list", "watch", "discovery", "lease_get"})


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with own_cluster(
        "run-chart-",
        lambda: request.session.testsfailed,
        extra_args={"kube-apiserver": ["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]},
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kubectl(cluster: Cluster) -> Kubectl:
    kubectl = cluster.kubectl()
    create_namespaces(kubectl, SERVE_NS, TRAIN_NS, OTHER_NS)
    return kubectl


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm.ensure(home=tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def installed(helm: Helm, cluster: Cluster, kubectl: Kubectl) -> str:
    """`helm install` into kubeforge-system; returns helm's output (with NOTES)."""
    return helm.install(RELEASE, NAMESPACE, cluster.kubeconfig, values=VALUES).stdout


def _chart_args(kubectl: Kubectl) -> tuple[str, ...]:
    """The installed Deployment's operator arguments, less `run` and the liveness and metrics ports
    (OperatorProcess picks free local ones)."""
    deployment = kubectl.json("get", "deployment", RELEASE, namespace=NAMESPACE)
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run", args
    return tuple(a for a in args[1:] if not a.startswith(("--liveness=", "--metrics-port=")))


def _operator(
    cluster: Cluster, kubectl: Kubectl, name: str = f"{RELEASE}-0", metrics: bool = False
) -> OperatorProcess:
    """`python -m kubeforge run` as the chart runs it, authenticated as the chart's ServiceAccount, as the
    pod `name` (POD_NAME: its identity in the Lease). Model probe off (OperatorProcess)."""
    config = service_account_kubeconfig(kubectl, NAMESPACE, RELEASE, cluster.state_dir / f"{name}.kubeconfig")
    operator = OperatorProcess(
        config, cluster.state_dir / f"{name}.log", cluster.state_dir / "run" / f"{name}.pid"
    )
    operator.start(
        metrics=metrics, extra_args=_chart_args(kubectl), env={"POD_NAME": name, "POD_NAMESPACE": NAMESPACE}
    )
    return operator


def _denials(operator: OperatorProcess, offset: int = 0) -> list[str]:
    lines = operator.log_text(offset).splitlines()
    return [line for line in lines if DENIED.search(LOG_TIME.sub("", line))]


def _model_deployment(namespace: str, name: str = "resnet50") -> str:
    doc = yaml.safe_load((EXAMPLES / "model-deployment.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["metadata"]["name"] = name
    return json.dumps(doc)


def _lease(kubectl: Kubectl) -> dict[str, Any]:
    lease: dict[str, Any] = kubectl.json("get", "lease", LEASE, namespace=NAMESPACE)
    return lease


def _training_job(namespace: str) -> str:
    doc = yaml.safe_load((EXAMPLES / "training-job.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["podMetadata"] = {
        "annotations": {"sim.kubeforge.io/exit-code": "0", "sim.kubeforge.io/exit-after": "2s"}
    }
    return json.dumps(doc)


def test_install_creates_the_chart_objects(installed: str, kubectl: Kubectl) -> None:
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in installed  # NOTES
    for crd in ("modeldeployments.kubeforge.io", "trainingjobs.kubeforge.io"):
        wait_established(kubectl, crd)
    deployment = kubectl.json("get", "deployment", RELEASE, namespace=NAMESPACE)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == RELEASE
    assert pod["containers"][0]["image"] == "kubeforge.invalid/operator:e2e"
    kubectl("get", "serviceaccount", RELEASE, namespace=NAMESPACE)
    kubectl("get", "clusterrole,clusterrolebinding", RELEASE)
    kubectl("get", "service", f"{RELEASE}-metrics", namespace=NAMESPACE)
    kubectl("get", "networkpolicy,poddisruptionbudget", RELEASE, namespace=NAMESPACE)


def test_the_service_account_runs_both_scenarios(
    installed: str, cluster: Cluster, kubectl: Kubectl, tmp_path: Path
) -> None:
    whoami = kubectl.json("auth", "whoami")  # admin, for contrast with the operator's kubeconfig below
    assert whoami["status"]["userInfo"]["username"] != SERVICE_ACCOUNT
    operator = _operator(cluster, kubectl)
    try:
        sa = Kubectl(operator.kubeconfig, cache_dir=tmp_path / "kubectl-cache")
        assert sa.json("auth", "whoami")["status"]["userInfo"]["username"] == SERVICE_ACCOUNT

        bound_claim(kubectl, SERVE_NS, "models")
        kubectl.apply(_model_deployment(SERVE_NS))
        md = wait_condition(kubectl, "md", "resnet50", "Ready", namespace=SERVE_NS, timeout=90)
        assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
        for kind in ("deployment", "service", "hpa"):
            child = kubectl.json("get", kind, "resnet50", namespace=SERVE_NS)
            assert child["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"], kind
        # the chart's --leader-elect: the one replica leads under its pod name
        assert _lease(kubectl)["spec"]["holderIdentity"] == f"{RELEASE}-0"

        bound_claim(kubectl, TRAIN_NS, "training-checkpoints")
        kubectl.apply(_training_job(TRAIN_NS))
        tj = wait_condition(kubectl, "tj", "mnist-ddp", "Succeeded", namespace=TRAIN_NS, timeout=120)
        assert tj["status"]["phase"] == "Succeeded"

        events = kubectl.json(
            "get", "events", "--field-selector", "involvedObject.kind=ModelDeployment", namespace=SERVE_NS
        )["items"]
        assert [e for e in events if e.get("reportingComponent") == "kubeforge"], (
            "the operator posted no Event"
        )
        assert operator.is_running()
        assert not _denials(operator), "\n".join(_denials(operator))
    finally:
        operator.stop()


def test_two_replicas_elect_one_leader_and_fail_over(
    installed: str, cluster: Cluster, kubectl: Kubectl, record_property: Any
) -> None:
    """Two replicas as the chart runs them: one holds the Lease and writes, the other only reads; after a
    SIGKILL of the leader (no release of the Lease) the standby leads once the Lease has expired."""
    bound_claim(kubectl, SERVE_NS, "models")  # the same claim as the first test's (apply: idempotent)
    replicas: dict[str, OperatorProcess] = {}
    try:
        for name in (f"{RELEASE}-a", f"{RELEASE}-b"):
            replicas[name] = _operator(cluster, kubectl, name, metrics=True)
        holder = wait_for(
            lambda: _lease(kubectl)["spec"].get("holderIdentity") or None,
            timeout=30,
            message="a Lease holder",
        )
        assert holder in replicas, holder
        standby_name = next(name for name in replicas if name != holder)
        leader, standby = replicas[holder], replicas[standby_name]
        assert f"leader election: {holder} now leads" in leader.log_text()
        assert "now leads" not in standby.log_text()

        kubectl.apply(_model_deployment(SERVE_NS, "resnet50-ha-1"))
        wait_condition(kubectl, "md", "resnet50-ha-1", "Ready", namespace=SERVE_NS, timeout=90)
        lease = _lease(kubectl)
        assert lease["spec"]["holderIdentity"] == holder
        assert leader.reconciles("ModelDeployment") > 0 and leader.api_calls()["apply"] > 0
        # only the leader writes: the standby kept its cache and read the Lease, nothing else
        assert standby.reconciles() == 0
        calls = standby.api_calls()
        assert set(calls) <= STANDBY_CALLS, calls
        assert calls["lease_get"] > 0 and calls["list"] > 0

        killed_at = time.monotonic()
        leader.kill()
        wait_for(
            lambda: standby.reconciles() > 0, timeout=30, interval=0.1, message="a reconcile by the standby"
        )
        failover = time.monotonic() - killed_at
        record_property("failover_seconds", round(failover, 1))
        print(
            f"\nfailover: {failover:.1f}s from SIGKILL of {holder} to the first reconcile by {standby_name}"
        )
        taken = _lease(kubectl)["spec"]
        assert taken["holderIdentity"] == standby_name
        assert taken["leaseTransitions"] == lease["spec"]["leaseTransitions"] + 1
        # not before the Lease expired (12 s after the last renewal the standby saw), within ~2 retries after
        assert 9.0 < failover < 16.0, (
            f"failover took {failover:.1f}s; expected ~12-14 s (Lease 12 s, renew deadline 7 s, retry 1.5 s)"
        )

        kubectl.apply(_model_deployment(SERVE_NS, "resnet50-ha-2"))
        md = wait_condition(kubectl, "md", "resnet50-ha-2", "Ready", namespace=SERVE_NS, timeout=90)
        assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
        child = kubectl.json("get", "deployment", "resnet50-ha-2", namespace=SERVE_NS)
        assert child["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
        assert standby.api_calls()["apply"] > 0
        for name, operator in replicas.items():
            assert not _denials(operator), f"{name}:\n" + "\n".join(_denials(operator))
    finally:
        for operator in replicas.values():
            operator.stop()  # the survivor releases the Lease: the next operator leads at once
        kubectl("delete", "md", "resnet50-ha-1", "resnet50-ha-2", "--ignore-not-found", namespace=SERVE_NS)


# (verb, resource, namespace or None for all, subresource): what the operator needs, as control ...
ALLOWED = [
    ("patch", "deployments.apps", SERVE_NS, None),
    ("delete", "services", SERVE_NS, None),
    ("create", "horizontalpodautoscalers.autoscaling", None, None),
    ("watch", "pods", None, None),
    # the model cache: the operator's claim (watched, applied, deleted); its values from Secrets never
    ("watch", "persistentvolumeclaims", None, None),
    ("delete", "persistentvolumeclaims", SERVE_NS, None),
    ("patch", "deployments.apps", SERVE_NS, "scale"),
    ("patch", "modeldeployments.kubeforge.io", SERVE_NS, "status"),
    ("create", "events", TRAIN_NS, None),
    # leader election: its one Lease by name, and create (which a name cannot restrict), in the release namespace
    ("get", f"{LEASES}/{LEASE}", NAMESPACE, None),
    ("update", f"{LEASES}/{LEASE}", NAMESPACE, None),
    ("create", LEASES, NAMESPACE, None),
]
# ... and what it must not be able to do.
DENIED_ACTIONS = [
    ("get", "secrets", None, None),
    ("list", "secrets", SERVE_NS, None),
    ("get", "secrets", NAMESPACE, None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None),
    ("create", "rolebindings.rbac.authorization.k8s.io", SERVE_NS, None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None, None),
    ("escalate", "roles.rbac.authorization.k8s.io", SERVE_NS, None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None, None),
    ("impersonate", "serviceaccounts", None, None),
    ("delete", "namespaces", None, None),
    ("create", "pods", SERVE_NS, None),
    ("create", "pods", SERVE_NS, "exec"),
    ("update", "modeldeployments.kubeforge.io", SERVE_NS, None),
    ("delete", "modeldeployments.kubeforge.io", SERVE_NS, None),
    ("patch", "trainingjobs.kubeforge.io", TRAIN_NS, None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("get", "configmaps", SERVE_NS, None),
    ("patch", "nodes", None, None),
    # no other Lease (e.g. kube-controller-manager's), no other verb, no other namespace
    ("get", f"{LEASES}/kube-controller-manager", "kube-system", None),
    ("update", f"{LEASES}/another-operator", NAMESPACE, None),
    ("list", LEASES, NAMESPACE, None),
    ("watch", LEASES, NAMESPACE, None),
    ("patch", f"{LEASES}/{LEASE}", NAMESPACE, None),
    ("delete", f"{LEASES}/{LEASE}", NAMESPACE, None),
    ("create", LEASES, SERVE_NS, None),
    ("update", f"{LEASES}/{LEASE}", SERVE_NS, None),
]


def _ids(actions: list[tuple[str, str, str | None, str | None]]) -> list[str]:
    return [f"{v} {r}{'/' + s if s else ''} in {ns or 'all'}" for v, r, ns, s in actions]


@pytest.mark.parametrize(("verb", "resource", "namespace", "subresource"), ALLOWED, ids=_ids(ALLOWED))
def test_the_service_account_can(
    installed: str, kubectl: Kubectl, verb: str, resource: str, namespace: str | None, subresource: str | None
) -> None:
    assert can_i(kubectl, SERVICE_ACCOUNT, verb, resource, namespace, subresource)


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "subresource"), DENIED_ACTIONS, ids=_ids(DENIED_ACTIONS)
)
def test_the_service_account_cannot(
    installed: str, kubectl: Kubectl, verb: str, resource: str, namespace: str | None, subresource: str | None
) -> None:
    assert not can_i(kubectl, SERVICE_ACCOUNT, verb, resource, namespace, subresource)


def test_a_teams_edit_and_view_roles_cover_the_crds(installed: str, kubectl: Kubectl) -> None:
    """The chart's user roles aggregate into the built-in edit and view: a namespace's RoleBindings
    are all a team needs (the API server's own aggregation controller and RBAC decide)."""
    for user, role in (("alice", "edit"), ("bob", "view")):
        kubectl(
            "create",
            "rolebinding",
            f"team-{role}",
            f"--clusterrole={role}",
            f"--user={user}",
            namespace=SERVE_NS,
        )
    wait_for(
        lambda: can_i(kubectl, "alice", "create", "modeldeployments.kubeforge.io", SERVE_NS),
        timeout=30,
        message="edit aggregating kubeforge-edit",
    )
    for verb, resource, subresource in [
        ("create", "modeldeployments.kubeforge.io", None),
        ("patch", "modeldeployments.kubeforge.io", "scale"),
        ("delete", "trainingjobs.kubeforge.io", None),
        ("get", "modeldeployments.kubeforge.io", "status"),
    ]:
        assert can_i(kubectl, "alice", verb, resource, SERVE_NS, subresource), (verb, resource, subresource)
    wait_for(
        lambda: can_i(kubectl, "bob", "list", "modeldeployments.kubeforge.io", SERVE_NS),
        timeout=30,
        message="view aggregating kubeforge-view",
    )
    assert can_i(kubectl, "bob", "get", "trainingjobs.kubeforge.io", SERVE_NS, "status")
    for verb, resource, subresource in [
        ("create", "modeldeployments.kubeforge.io", None),
        ("patch", "modeldeployments.kubeforge.io", "scale"),
        ("get", "secrets", None),  # the Secrets a spec names stay unreadable to a viewer
    ]:
        assert not can_i(kubectl, "bob", verb, resource, SERVE_NS, subresource), (verb, resource, subresource)
    # and only where the binding is
    assert not can_i(kubectl, "bob", "list", "modeldeployments.kubeforge.io", OTHER_NS)
    assert not can_i(kubectl, "alice", "create", "modeldeployments.kubeforge.io", OTHER_NS)


def _stand_in_crd(group: str, version: str, kind: str, plural: str) -> str:
    """A CRD of another project's kind (its API served, any content), for what its RBAC allows."""
    return json.dumps(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": version,
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
    )


STAND_INS = (
    ("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
)


def _wait_reconciled(kubectl: Kubectl, namespace: str, name: str) -> None:
    """Wait until the operator wrote the ModelDeployment's status (its phase)."""
    wait_for(
        lambda: (
            kubectl.json("get", "md", name, namespace=namespace).get("status", {}).get("phase") is not None
        ),
        timeout=60,
        message=f"ModelDeployment {namespace}/{name} reconciled",
    )


def _watch_refused(operator: OperatorProcess) -> dict[tuple[str, str], float]:
    """kubeforge_watch_refused by (kind, namespace)."""
    return {
        (labels.get("kind", ""), labels.get("namespace", "")): value
        for name, labels, value in operator.metrics()
        if name == "kubeforge_watch_refused"
    }


def test_a_refused_watch_does_not_hold_startup_and_is_named(
    installed: str, helm: Helm, cluster: Cluster, kubectl: Kubectl
) -> None:
    """KEDA's and the Prometheus operator's APIs are served, but the chart grants neither
    (rbac.keda and rbac.prometheusOperator false): the operator starts, names both refused kinds
    in its log and in kubeforge_watch_refused, and reconciles the rest."""
    helm.install(
        RELEASE,
        NAMESPACE,
        cluster.kubeconfig,
        values={**VALUES, "rbac": {"keda": False, "prometheusOperator": False}},
        upgrade=True,
    )
    for stand_in in STAND_INS:
        kubectl.apply(_stand_in_crd(*stand_in))
    wait_established(kubectl, *(f"{s[3]}.{s[0]}" for s in STAND_INS))
    bound_claim(kubectl, SERVE_NS, "models")
    kubectl.apply(_model_deployment(SERVE_NS, "refused-watches"))
    # live within OperatorProcess.start's 60 s; a log of its own (the later tests read kubeforge-0's)
    operator = _operator(cluster, kubectl, name=f"{RELEASE}-refused", metrics=True)
    try:
        _wait_reconciled(kubectl, SERVE_NS, "refused-watches")
        log = operator.log_text()
        for kind in ("ScaledObject", "ServiceMonitor"):
            assert f"informer {kind} in all namespaces: refused" in log
            refused = [v for (k, _), v in _watch_refused(operator).items() if k == kind]
            assert refused == [1.0], (kind, refused)
    finally:
        operator.stop()
        kubectl("delete", "md", "refused-watches", namespace=SERVE_NS, check=False)
        for stand_in in STAND_INS:
            kubectl("delete", "crd", f"{stand_in[3]}.{stand_in[0]}", check=False)
        helm.install(RELEASE, NAMESPACE, cluster.kubeconfig, values=VALUES, upgrade=True)


def test_a_watched_namespace_whose_role_was_removed_does_not_hold_startup(
    installed: str, helm: Helm, cluster: Cluster, kubectl: Kubectl
) -> None:
    """Namespaced mode over two namespaces, and the Role in one of them deleted (by hand, or a
    policy engine): the operator starts, names every kind refused there in its log and in
    kubeforge_watch_refused, and serves the other namespace."""
    values = {**VALUES, "watchNamespaces": [SERVE_NS, TRAIN_NS]}
    helm.install(RELEASE, NAMESPACE, cluster.kubeconfig, values=values, upgrade=True)
    kubectl("delete", "role", RELEASE, namespace=TRAIN_NS)
    bound_claim(kubectl, SERVE_NS, "models")
    kubectl.apply(_model_deployment(SERVE_NS, "role-removed"))
    operator = _operator(cluster, kubectl, name=f"{RELEASE}-role-removed", metrics=True)
    try:
        _wait_reconciled(kubectl, SERVE_NS, "role-removed")
        log = operator.log_text()
        for kind in ("ModelDeployment", "TrainingJob", "Deployment"):
            assert f"informer {kind} in {TRAIN_NS}: refused" in log, kind
        refused = _watch_refused(operator)
        assert {"ModelDeployment", "TrainingJob", "Deployment"} <= {
            kind for (kind, ns), value in refused.items() if ns == TRAIN_NS and value == 1.0
        }
        assert not [value for (_, ns), value in refused.items() if ns == SERVE_NS and value]
    finally:
        operator.stop()
        kubectl("delete", "md", "role-removed", namespace=SERVE_NS, check=False)
        helm.install(RELEASE, NAMESPACE, cluster.kubeconfig, values=VALUES, upgrade=True)


def test_upgrade_to_namespaced_mode(
    installed: str, helm: Helm, cluster: Cluster, kubectl: Kubectl, tmp_path: Path
) -> None:
    values = {**VALUES, "watchNamespaces": [SERVE_NS], "tritonImage": "registry.local/tritonserver:e2e"}
    helm.install(RELEASE, NAMESPACE, cluster.kubeconfig, values=values, upgrade=True)

    env = kubectl.json("get", "deployment", RELEASE, namespace=NAMESPACE)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert {"name": "KUBEFORGE_TRITON_IMAGE", "value": "registry.local/tritonserver:e2e"} in env["env"]
    assert f"--namespace={SERVE_NS}" in env["args"]
    assert kubectl("get", "clusterrole,clusterrolebinding", RELEASE, check=False).returncode != 0
    kubectl("get", "role,rolebinding", RELEASE, namespace=SERVE_NS)

    assert can_i(kubectl, SERVICE_ACCOUNT, "patch", "deployments.apps", SERVE_NS)
    assert can_i(kubectl, SERVICE_ACCOUNT, "watch", "modeldeployments.kubeforge.io", SERVE_NS)
    for verb, resource, namespace in [
        ("patch", "deployments.apps", OTHER_NS),
        ("get", "deployments.apps", TRAIN_NS),
        ("list", "deployments.apps", None),
        ("list", "modeldeployments.kubeforge.io", None),
        ("list", "namespaces", None),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("get", "secrets", SERVE_NS),
        ("create", LEASES, SERVE_NS),
    ]:
        assert not can_i(kubectl, SERVICE_ACCOUNT, verb, resource, namespace), (verb, resource, namespace)
    # the Lease stays where it was: in the release namespace
    for verb, resource in [("get", f"{LEASES}/{LEASE}"), ("update", f"{LEASES}/{LEASE}"), ("create", LEASES)]:
        assert can_i(kubectl, SERVICE_ACCOUNT, verb, resource, NAMESPACE), (verb, resource)

    # the namespaced operator still serves its namespace, and only that one
    # the chart's arguments now include --namespace=chart-serve (and still --leader-elect)
    assert f"--namespace={SERVE_NS}" in _chart_args(kubectl)
    operator = _operator(cluster, kubectl)
    try:
        # one ModelDeployment outside the watched namespace (applied first: it has had time to be seen) ...
        bound_claim(kubectl, OTHER_NS, "models")
        kubectl.apply(_model_deployment(OTHER_NS))
        # ... and one change inside it
        kubectl("scale", "md", "resnet50", "--replicas=2", namespace=SERVE_NS)
        wait_for(
            lambda: (
                kubectl.json("get", "md", "resnet50", namespace=SERVE_NS)["status"].get("readyReplicas") == 2
            ),
            timeout=60,
            message="resnet50 at 2 ready replicas",
        )
        # kopf's cluster scanning is off: the namespaced operator is never denied anything
        denied = _denials(operator)
        assert not denied, "\n".join(denied)
        assert "status" not in kubectl.json("get", "md", "resnet50", namespace=OTHER_NS)
        assert _lease(kubectl)["spec"]["holderIdentity"] == f"{RELEASE}-0"
    finally:
        operator.stop()


def test_uninstall_leaves_nothing_but_the_crds(
    installed: str, helm: Helm, cluster: Cluster, kubectl: Kubectl
) -> None:
    helm.uninstall(RELEASE, NAMESPACE, cluster.kubeconfig)
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/managed-by=Helm"
    leftovers = kubectl("get", ",".join(CHART_KINDS), "--all-namespaces", "-l", selector, "-o", "name").stdout
    leftovers += kubectl("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").stdout
    leftovers += kubectl(
        "get", "secrets", "-l", f"owner=helm,name={RELEASE}", "-o", "name", namespace=NAMESPACE
    ).stdout
    assert not leftovers.strip(), leftovers
    # Helm never deletes CRDs, so the custom resources (and what the operator made of them) survive
    for crd in ("modeldeployments.kubeforge.io", "trainingjobs.kubeforge.io"):
        kubectl("get", "crd", crd)
    kubectl("get", "md", "resnet50", namespace=SERVE_NS)
