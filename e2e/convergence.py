"""Whether an owner's children are exactly what the builders make of its current spec.

The API server is the judge: the builders' output for the live spec is applied with a
server-side **dry run** under the operator's field manager. Server-side apply removes every field
that manager set before and no longer sets, so the dry-run result equals the live child only if
the operator already applied the current desired object, removals included. A leftover env var,
node selector or limit shows up as a difference. Then no child may exist that the builders do
not make ("nothing more").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from e2e.kube import Kubectl
from kubeforge.api import ModelDeployment
from kubeforge.api.modeldeployment import RolloutStatus
from kubeforge.api.trainingjob import TrainingJob
from kubeforge.builders import autoscaling
from kubeforge.builders.cache import build_cache_claim, build_cache_fill_job, model_cache_key
from kubeforge.builders.gateway import build_http_route
from kubeforge.builders.leaderworkerset import build_leader_service, build_leaderworkerset
from kubeforge.builders.modeldeployment import (
    build_canary_deployment,
    build_pod_disruption_budget,
    build_revision_services,
    build_service,
    build_triton_deployment,
)
from kubeforge.builders.network import (
    build_model_deployment_network_policy,
    build_training_job_network_policy,
)
from kubeforge.builders.trainingjob import build_headless_service, build_worker_job
from kubeforge.controllers.rollout import ROLLOUT_CAUSE_ANNOTATION, WORKLOAD_TEMPLATE_ANNOTATION, annotated
from kubeforge.k8s.semantic import applied_hash, controller_uid, stamped
from kubeforge.settings import Settings

FIELD_MANAGER = "kubeforge"
COMPARED = ("spec",)
COMPARED_META = ("labels", "annotations", "ownerReferences")
# the children the operator may create, as kubectl names them, per owner kind
CHILD_KINDS = {
    "modeldeployment": (
        "deployments.apps",
        "services",
        "poddisruptionbudgets.policy",
        "networkpolicies.networking.k8s.io",
        "horizontalpodautoscalers.autoscaling",
        "jobs.batch",
        "persistentvolumeclaims",
    ),
    "trainingjob": ("jobs.batch", "services", "networkpolicies.networking.k8s.io"),
}
# ... and where the LeaderWorkerSet CRD is installed (e2e/lws.py), the groups of multi-node replicas
LEADER_WORKER_SETS = "leaderworkersets.leaderworkerset.x-k8s.io"
# ... and where the Gateway API's CRDs are (e2e/gateway.py), the routes of canaries split by a Gateway
HTTP_ROUTES = "httproutes.gateway.networking.k8s.io"
OPTIONAL_KINDS = (LEADER_WORKER_SETS, HTTP_ROUTES)
Object = dict[str, Any]
# status.rollout.phase while a canary runs, and while the stable keeps its template after a rollback
CANARY_RUNNING = ("Progressing", "Paused")
CANARY_HELD = (*CANARY_RUNNING, "RolledBack")


def serves_current_spec(md_body: Object) -> bool:
    """Whether the operator applies the current spec's pods: always without a model cache, with one
    only once the fill of the spec's key is Ready (until then the Deployment is left as it was, and
    the Jobs and claims of earlier fills are kept)."""
    if _rollout_phase(md_body) in CANARY_HELD:
        return False  # the stable Deployment keeps its template beside a canary, or after a rollback
    md = ModelDeployment.model_validate(md_body)
    key = model_cache_key(md)
    if key is None:
        return True
    cache = (md_body.get("status") or {}).get("cache") or {}
    return bool(cache.get("key") == key and cache.get("state") == "Ready")


def _rollout_phase(md_body: Object) -> str | None:
    rollout = (md_body.get("status") or {}).get("rollout") or {}
    phase: str | None = rollout.get("phase")
    return phase


def _canary(md: ModelDeployment, md_body: Object, settings: Settings) -> Object | None:
    """The canary Deployment a running canary rollout wants: the current spec's, at its step's replicas."""
    if _rollout_phase(md_body) not in CANARY_RUNNING:
        return None
    rollout = md_body["status"]["rollout"]
    return build_canary_deployment(md, settings, rollout["canaryReplicas"], rollout["canaryRevision"])


def desired_model_deployment_children(md_body: Object, settings: Settings) -> list[Object]:
    md = ModelDeployment.model_validate(md_body)
    multi_node = md.spec.replica_nodes > 1
    children = [
        build_leader_service(md) if multi_node else build_service(md),
        build_pod_disruption_budget(md),
        build_model_deployment_network_policy(md, settings),
    ]
    if serves_current_spec(md_body):
        workload = (
            build_leaderworkerset(md, settings) if multi_node else build_triton_deployment(md, settings)
        )
        # with what it was applied for (controllers/rollout.py): the generation, the template's hash
        children.insert(0, annotated(workload, md.metadata.generation, None))
    children += [autoscaling.build_hpa(md), build_cache_claim(md), _canary(md, md_body, settings)]
    rollout = (md_body.get("status") or {}).get("rollout")
    children += [
        *build_revision_services(md),
        build_http_route(md, RolloutStatus.model_validate(rollout) if rollout else None),
    ]
    if not _filled(md_body):
        children.append(build_cache_fill_job(md, settings))
    return [c for c in children if c is not None]


def _filled(md_body: Object) -> bool:
    """Whether status says the cache of the spec's key is complete: its fill Job may then be gone
    (a TTL, a person) and is not created again."""
    key = model_cache_key(ModelDeployment.model_validate(md_body))
    cache = (md_body.get("status") or {}).get("cache") or {}
    return key is not None and cache.get("key") == key and cache.get("state") == "Ready"


def _fill_job_of_a_filled_cache(md_body: Object, child: Object) -> bool:
    labels = child["metadata"].get("labels") or {}
    return (
        child["kind"] == "Job"
        and labels.get("app.kubernetes.io/component") == "model-cache"
        and _filled(md_body)
        and child["metadata"]["name"] == (md_body.get("status") or {}).get("cache", {}).get("job")
    )


def _tolerated(md_body: Object, child: Object) -> bool:
    """A child the operator keeps while a model cache fills: the Deployment of the previous spec and the
    claims and fill Jobs of earlier caches."""
    if _fill_job_of_a_filled_cache(md_body, child):
        return True
    rollout = (md_body.get("status") or {}).get("rollout") or {}
    if (
        rollout.get("canaryDrainUntil")
        and child["kind"] == "Deployment"
        and child["metadata"]["name"].endswith("-canary")
    ):
        return True  # an ended canary's pods drain (a Gateway's route moved off them a moment ago)
    if serves_current_spec(md_body):
        return False
    labels = child["metadata"].get("labels") or {}
    return child["kind"] == "Deployment" or labels.get("app.kubernetes.io/component") == "model-cache"


def desired_training_job_children(tj_body: Object, settings: Settings) -> list[Object]:
    tj = TrainingJob.model_validate(tj_body)
    children = [build_headless_service(tj)]
    fence = build_training_job_network_policy(tj, settings)
    if fence is not None:
        children.append(fence)
    run_policy, scheduling = tj.spec.run_policy, tj.spec.scheduling
    if not (run_policy and run_policy.suspend):
        attempt = int((tj_body.get("status") or {}).get("attempt") or 0)
        children.append(build_worker_job(tj, attempt, suspend=bool(scheduling and scheduling.queue)))
    return children


def _view(obj: Object) -> Object:
    meta = obj.get("metadata") or {}
    return {
        **{k: obj.get(k) for k in COMPARED},
        **{f"metadata.{k}": meta.get(k) for k in COMPARED_META},
    }


def _as_applied(desired: Object, live: Object) -> Object:
    """`desired` as the operator applies it to `live`: a serving workload keeps the cause of its
    template (kubeforge.io/rollout-cause, a fact about the live object) while its template stays."""
    annotations = desired["metadata"].get("annotations") or {}
    live_annotations = live["metadata"].get("annotations") or {}
    cause = live_annotations.get(ROLLOUT_CAUSE_ANNOTATION)
    template = annotations.get(WORKLOAD_TEMPLATE_ANNOTATION)
    if cause and template and template == live_annotations.get(WORKLOAD_TEMPLATE_ANNOTATION):
        meta = {**desired["metadata"], "annotations": {**annotations, ROLLOUT_CAUSE_ANNOTATION: cause}}
        return {**desired, "metadata": meta}
    return desired


def differences(kubectl: Kubectl, desired: Object, namespace: str) -> list[str]:
    """Where the live child differs from the result of applying `desired` (stamped) now; [] when converged."""
    kind, name = desired["kind"], desired["metadata"]["name"]
    group = _group(desired)
    resource = kind.lower() + (f".{group}" if group else "")  # kubectl takes the singular
    result = kubectl("get", resource, name, "-o", "json", namespace=namespace, check=False)
    if result.returncode != 0:
        return [f"{kind} {name} is missing"]
    live = json.loads(result.stdout)
    applied = stamped(_as_applied(desired, live))
    dry = kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        f"--field-manager={FIELD_MANAGER}",
        "--force-conflicts",
        "-o",
        "json",
        "-f",
        "-",
        namespace=namespace,
        input=json.dumps(applied),
        check=False,
    )
    if dry.returncode != 0:  # e.g. an immutable Job template that the operator has not replaced yet
        return [f"{kind} {name}: applying the desired object would fail: {dry.stderr.strip()[:300]}"]
    want, have = _view(json.loads(dry.stdout)), _view(live)
    return [f"{kind} {name} {path}" for key in want for path in _paths(want[key], have[key], key)]


def _paths(want: Any, have: Any, path: str) -> list[str]:
    """Where two JSON values differ, as `path: live X, desired Y` lines."""
    if isinstance(want, dict) and isinstance(have, dict):
        return [
            p for k in sorted(set(want) | set(have)) for p in _paths(want.get(k), have.get(k), f"{path}.{k}")
        ]
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return [
            p for i, (w, h) in enumerate(zip(want, have, strict=True)) for p in _paths(w, h, f"{path}[{i}]")
        ]
    if want == have:
        return []
    return [f"{path}: live {json.dumps(have)[:200]}, desired {json.dumps(want)[:200]}"]


def _group(obj: Object) -> str:
    api_version = obj["apiVersion"]
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def _child_kinds(kubectl: Kubectl, owner_kinds: tuple[str, ...]) -> str:
    kinds = sorted({k for owner_kind in owner_kinds for k in CHILD_KINDS[owner_kind]})
    if "modeldeployment" in owner_kinds:
        kinds += [k for k in OPTIONAL_KINDS if kubectl("get", "crd", k, check=False).returncode == 0]
    return ",".join(kinds)


def extra_children(
    kubectl: Kubectl,
    owner_kind: str,
    owner: str,
    desired: list[Object],
    namespace: str,
    tolerated: Callable[[Object], bool] = lambda _: False,
) -> list[str]:
    """Children labelled with the owner that the builders do not make (and that are not `tolerated`)."""
    wanted = {(d["kind"], d["metadata"]["name"]) for d in desired}
    selector = f"kubeforge.io/owner-kind={owner_kind},kubeforge.io/owner-name={owner}"
    kinds = _child_kinds(kubectl, (owner_kind,))
    items = kubectl.json("get", kinds, "-l", selector, namespace=namespace)["items"]
    return [
        f"{i['kind']} {i['metadata']['name']} is not wanted"
        for i in items
        if (i["kind"], i["metadata"]["name"]) not in wanted
        and not i["metadata"].get("deletionTimestamp")
        and not tolerated(i)
    ]


def model_deployment_differences(
    kubectl: Kubectl, name: str, namespace: str, settings: Settings
) -> list[str]:
    body = kubectl.json("get", "md", name, namespace=namespace)
    desired = desired_model_deployment_children(body, settings)
    problems = [p for d in desired for p in differences(kubectl, d, namespace)]
    return problems + extra_children(
        kubectl, "modeldeployment", name, desired, namespace, lambda child: _tolerated(body, child)
    )


def training_job_differences(
    kubectl: Kubectl, name: str, namespace: str, settings: Settings | None = None
) -> list[str]:
    body = kubectl.json("get", "tj", name, namespace=namespace)
    desired = desired_training_job_children(body, settings or Settings())
    problems = [p for d in desired for p in differences(kubectl, d, namespace)]
    return problems + extra_children(kubectl, "trainingjob", name, desired, namespace)


def namespace_problems(kubectl: Kubectl, namespace: str, settings: Settings) -> list[str]:
    """Everything wrong with a namespace after a storm of faults, in one list per kind.

    Every owner observed its generation; every child the builders make exists once, controlled by
    its owner, applied from the current spec (its desired-hash annotation equals the builders'
    object's hash); no child exists that no owner wants (an orphan or a duplicate).
    """
    problems: list[str] = []
    owners = [
        *kubectl.json("get", "md", namespace=namespace)["items"],
        *kubectl.json("get", "tj", namespace=namespace)["items"],
    ]
    desired: dict[tuple[str, str], Object] = {}
    by_name = {o["metadata"]["name"]: o for o in owners if o["kind"] == "ModelDeployment"}
    waiting = {
        o["metadata"]["name"] for o in owners if o["kind"] == "ModelDeployment" and not serves_current_spec(o)
    }
    for owner in owners:
        meta, status = owner["metadata"], owner.get("status") or {}
        if status.get("observedGeneration") != meta["generation"]:
            problems.append(f"{owner['kind']} {meta['name']}: generation {meta['generation']} not observed")
        children = (
            desired_model_deployment_children(owner, settings)
            if owner["kind"] == "ModelDeployment"
            else desired_training_job_children(owner, settings)
        )
        desired.update({(c["kind"], c["metadata"]["name"]): c for c in children})
    kinds = _child_kinds(kubectl, tuple(CHILD_KINDS))
    live = kubectl.json("get", kinds, "-l", "kubeforge.io/owner-kind", namespace=namespace)["items"]
    seen: set[tuple[str, str]] = set()
    for child in live:
        key = (child["kind"], child["metadata"]["name"])
        if child["metadata"].get("deletionTimestamp"):
            continue
        labels = child["metadata"].get("labels") or {}
        if labels.get("kubeforge.io/owner-name") in waiting and key not in desired:
            continue  # kept while its owner's model cache fills
        owner = by_name.get(labels.get("kubeforge.io/owner-name", ""))
        if key not in desired and owner is not None and _fill_job_of_a_filled_cache(owner, child):
            continue  # the fill Job of a complete cache: kept or gone, either is converged
        seen.add(key)
        want = desired.get(key)
        if want is None:
            problems.append(f"{key[0]} {key[1]}: not wanted by any owner (orphan)")
        elif controller_uid(child) != controller_uid(want):
            problems.append(f"{key[0]} {key[1]}: controlled by {controller_uid(child)}, not its owner")
        elif applied_hash(child) != applied_hash(stamped(_as_applied(want, child))):
            problems.append(f"{key[0]} {key[1]}: not applied from the current spec")
    problems += [f"{kind} {name}: missing" for kind, name in sorted(set(desired) - seen)]
    return problems
