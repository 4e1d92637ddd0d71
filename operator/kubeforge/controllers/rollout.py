"""Operator rollouts: a pod template that no edit asked for rolls a few ModelDeployments at a time.

A ModelDeployment's serving workload (its Deployment, or LeaderWorkerSet) gets a new pod template
for one of two causes:

- an edit of the ModelDeployment (a new generation): applied at once, the user asked for it;
- the operator itself: a new release whose builders render the same spec differently, a rollback,
  a new default helper image. Applied to at most `settings.operator_rollouts` (K) workloads at
  once; each holds its slot until its rollout completed (every replica updated and available), so
  an upgrade never sends the whole fleet to 0 ready at once, nor every server to download its
  weights at the same moment, and a new template that never becomes ready stops at K. The others
  keep serving with their template and say so in status (`RolloutDeferred`) until a slot frees
  (or their next edit). A workload that serves nothing (no replica available) takes no slot.

What this needs to remember lives on the workload, so a restarted operator counts the same:
- `kubeforge.io/spec-generation`: the ModelDeployment generation it was last applied for;
- `kubeforge.io/workload-template-hash`: a digest of its spec without replicas;
- `kubeforge.io/rollout-cause: operator` while its template came from an operator rollout.
A workload applied by a release before these annotations is judged by the generation that
release last wrote to status, and by comparing the template's values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kubeforge.builders.meta import OWNER_KIND_LABEL, OWNER_NAME_LABEL
from kubeforge.controllers.cache import ObjectCache
from kubeforge.k8s import resources as r
from kubeforge.k8s.semantic import controller_uid, is_subset
from kubeforge.status.workload import deployment_workload, leaderworkerset_workload

Object = dict[str, Any]

SPEC_GENERATION_ANNOTATION = "kubeforge.io/spec-generation"
WORKLOAD_TEMPLATE_ANNOTATION = "kubeforge.io/workload-template-hash"
ROLLOUT_CAUSE_ANNOTATION = "kubeforge.io/rollout-cause"
OPERATOR_CAUSE = "operator"
WORKLOADS = (r.DEPLOYMENT, r.LEADER_WORKER_SET)
# how soon a deferred ModelDeployment asks for a slot again (a freed slot sends it no event)
DEFERRED_RECHECK_SECONDS = 5.0


def _annotations(obj: Object) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


def workload_template_hash(desired: Object) -> str:
    """A digest of everything a rollout replaces: the workload's spec without its replicas."""
    spec = {k: v for k, v in desired["spec"].items() if k != "replicas"}
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def template_unchanged(desired: Object, live: Object) -> bool:
    recorded = _annotations(live).get(WORKLOAD_TEMPLATE_ANNOTATION)
    if recorded is not None:
        return recorded == workload_template_hash(desired)
    # applied by a release that recorded no digest: compare the values it set
    spec = {k: v for k, v in desired["spec"].items() if k != "replicas"}
    return is_subset(spec, live.get("spec") or {})


def applied_generation(live: Object, observed_generation: int | None) -> int | None:
    value = _annotations(live).get(SPEC_GENERATION_ANNOTATION)
    return int(value) if value is not None and value.isdigit() else observed_generation


def serving(live: Object) -> bool:
    status = live.get("status") or {}
    key = "availableReplicas" if live["kind"] == "Deployment" else "readyReplicas"
    return int(status.get(key, 0) or 0) > 0


def rolled_out(live: Object, pods: list[Object]) -> bool:
    """Whether a workload's rollout completed: every replica it wants updated and available."""
    replicas = int((live.get("spec") or {}).get("replicas", 1) or 0)
    if live["kind"] == "Deployment":
        return deployment_workload(live, replicas).rolled_out
    return leaderworkerset_workload(live, pods, replicas).rolled_out


def annotated(desired: Object, generation: int | None, cause: str | None) -> Object:
    meta = dict(desired["metadata"])
    annotations = {
        **(meta.get("annotations") or {}),
        SPEC_GENERATION_ANNOTATION: str(generation or 0),
        WORKLOAD_TEMPLATE_ANNOTATION: workload_template_hash(desired),
    }
    if cause:
        annotations[ROLLOUT_CAUSE_ANNOTATION] = cause
    meta["annotations"] = annotations
    return {**desired, "metadata": meta}


@dataclass(frozen=True)
class Decision:
    """What to apply: `desired` (annotated), or nothing (keep the live workload) and why."""

    desired: Object | None
    deferred: str | None = None
    operator_rollout: bool = False


class OperatorRollouts:
    """The fleet-wide budget of operator rollouts (one per operator process; its state is in the
    cluster, on the workloads). The lock makes "a slot is free" and the apply that takes it one
    step, so two reconciles never take the last slot twice."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.lock = asyncio.Lock()

    def rolling(self, cache: ObjectCache, exclude: tuple[str, str, str]) -> list[str]:
        """`namespace/name` of the workloads whose operator rollout has not completed yet."""
        names = []
        for resource in WORKLOADS:
            for namespace, name in cache.keys(resource.kind):
                if (resource.kind, namespace, name) == exclude:
                    continue
                live = cache.get(resource.kind, namespace, name)
                if live is None or _annotations(live).get(ROLLOUT_CAUSE_ANNOTATION) != OPERATOR_CAUSE:
                    continue
                labels = live["metadata"].get("labels") or {}
                owner = labels.get(OWNER_NAME_LABEL, "")
                pods = cache.owned(r.POD.kind, labels.get(OWNER_KIND_LABEL, ""), namespace, owner)
                if not rolled_out(live, pods):
                    names.append(f"{namespace}/{owner or name}")
        return sorted(names)

    def decide(
        self,
        cache: ObjectCache,
        desired: Object,
        live: Object | None,
        generation: int | None,
        observed_generation: int | None,
    ) -> Decision:
        """Whether `desired` is applied now (call with `lock` held until it is applied)."""
        if live is None or controller_uid(live) != controller_uid(desired):
            return Decision(annotated(desired, generation, None))  # new, or not ours: ensure() judges
        if template_unchanged(desired, live):
            kept = _annotations(live).get(ROLLOUT_CAUSE_ANNOTATION)
            return Decision(annotated(desired, generation, kept))
        if applied_generation(live, observed_generation) != generation or not serving(live):
            return Decision(annotated(desired, generation, None))
        meta = desired["metadata"]
        rolling = self.rolling(cache, (desired["kind"], meta["namespace"], meta["name"]))
        if len(rolling) >= self.limit:
            return Decision(
                None,
                deferred=(
                    "the operator renders a new pod template for this spec (a new release or setting); it "
                    f"rolls out {self.limit} ModelDeployment(s) at a time and waits for "
                    f"{', '.join(rolling)}; the pods keep serving with their template meanwhile"
                ),
            )
        return Decision(annotated(desired, generation, OPERATOR_CAUSE), operator_rollout=True)
