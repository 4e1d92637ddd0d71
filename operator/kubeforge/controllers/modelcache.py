"""The model cache of a ModelDeployment: its claim, its fill Job, and what is left of earlier fills.

A failed fill Job is deleted after `retry_delay` (status.cache.retryAt), and a new one of the same
name fills again: a Secret or a bucket fixed meanwhile is picked up without an edit.

The serving Deployment of a spec with a cache is applied only once the fill of the spec's current
key has completed: until then a new ModelDeployment has no pods, and one whose sources changed
keeps serving its previous models (its Deployment keeps its template; only its replicas follow the
spec, see controllers/modeldeployment.py). Once the new key is served,
the fill Jobs and operator claims of other keys are deleted; without spec.cache, all of them are.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from kubeforge.api.modeldeployment import CacheState, CacheStatus, ModelDeployment
from kubeforge.builders.cache import (
    CACHE_KEY_LABEL,
    COMPONENT,
    build_cache_claim,
    build_cache_fill_job,
    cache_claim_name,
    cache_entries_count,
    model_cache_key,
)
from kubeforge.builders.modeldeployment import PVC_ROOT
from kubeforge.controllers.context import Context
from kubeforge.k8s import resources as r
from kubeforge.k8s.semantic import controller_uid
from kubeforge.status.cache import CacheObservation, fill_failed_at, job_finished, needs_pod, retry_delay

log = logging.getLogger(__name__)
Object = dict[str, Any]
# a fill pod's events reach no watch of ours (it is not cached): how often a fill in progress is looked at
FILL_POLL_SECONDS = 15.0


def _owned(ctx: Context, resource: r.Resource, md: ModelDeployment) -> list[Object]:
    """Our cached children of a kind that belong to the cache (component label), controlled by our UID."""
    objects = ctx.cache.owned(resource.kind, "modeldeployment", md.metadata.namespace or "", md.metadata.name)
    return [
        o
        for o in objects
        if controller_uid(o) == md.metadata.uid
        and (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == COMPONENT
    ]


async def _fill_pod(ctx: Context, job: Object) -> Object | None:
    """The fill Job's latest pod, finished ones first once the Job has finished.

    Read live: the fill pods carry no owner labels (no Service or Deployment selector may ever pick
    them up), so they are not cached. Read while the fill runs (every FILL_POLL_SECONDS at most) and
    once when it has finished; never in the steady state.
    """
    uid = job["metadata"].get("uid")
    pods = await ctx.kube.list(
        r.POD, job["metadata"]["namespace"], label_selector=f"batch.kubernetes.io/controller-uid={uid}"
    )
    if job_finished(job):
        pods = [p for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return pods[-1] if pods else None


async def observe_cache(
    ctx: Context, md: ModelDeployment, previous: CacheStatus | None
) -> CacheObservation | None:
    """Apply the claim (cache.size) and create the fill Job of the spec's key; observe the fill."""
    claim, key = cache_claim_name(md), model_cache_key(md)
    if claim is None or key is None:
        return None
    desired_claim = build_cache_claim(md)
    if desired_claim is not None:
        await ctx.ensure(desired_claim)
    desired_job = build_cache_fill_job(md, ctx.settings, PVC_ROOT)
    assert desired_job is not None
    job_name = desired_job["metadata"]["name"]
    if (
        previous is not None
        and previous.key == key
        and previous.state == CacheState.READY
        and ctx.cache.get(r.JOB.kind, md.metadata.namespace or "", job_name) is None
    ):
        # the completion is remembered in status, not only by the fill Job: once the Job is gone
        # (its TTL, a person), the cache is still whole and is not filled again
        return CacheObservation(
            claim_name=claim,
            key=key,
            job_name=job_name,
            job=None,
            sources=cache_entries_count(md),
            filled=True,
        )
    # a Job's template cannot change; its name carries the key, so a new source is a new Job
    job: Object | None = await ctx.create_child(desired_job)
    retries = (previous.retries or 0) if previous is not None and previous.key == key else 0
    retry_at = None
    failed_at = fill_failed_at(job)
    if failed_at is not None:
        retry_at = failed_at + timedelta(seconds=retry_delay(ctx.settings.fill_retry_seconds, retries))
        if ctx.now() >= retry_at:
            # the Secret or the bucket may have been fixed since: a new Job of the same name fills
            # again once this one is gone (its deletion is an event of ours)
            log.info(
                "the fill Job %s failed at %s; deleting it to fill again",
                desired_job["metadata"]["name"],
                failed_at,
            )
            assert job is not None
            await ctx.delete_child(r.JOB, job)
            job, retries, retry_at = None, retries + 1, None
    pod = await _fill_pod(ctx, job) if job is not None and needs_pod(job, previous, key, retry_at) else None
    return CacheObservation(
        claim_name=claim,
        key=key,
        job_name=job_name,
        job=job,
        pod=pod,
        sources=cache_entries_count(md),
        retries=retries,
        retry_at=retry_at,
    )


async def sweep_cache(ctx: Context, md: ModelDeployment) -> None:
    """Delete the fill Jobs and operator claims that the spec's current cache no longer uses.

    Called once the pods of the current spec are applied: a claim an old pod still mounts stays
    until that pod is gone (the API server's pvc-protection finalizer).
    """
    key = model_cache_key(md)
    claim = build_cache_claim(md)
    keep_claim = claim["metadata"]["name"] if claim is not None else None
    for job in _owned(ctx, r.JOB, md):
        if (job["metadata"].get("labels") or {}).get(CACHE_KEY_LABEL) != key:
            log.info("deleting the fill Job %s of an earlier cache", job["metadata"]["name"])
            await ctx.delete_child(r.JOB, job)
    for pvc in _owned(ctx, r.PVC, md):
        if pvc["metadata"]["name"] != keep_claim and not pvc["metadata"].get("deletionTimestamp"):
            log.info("deleting the model cache claim %s (no longer used)", pvc["metadata"]["name"])
            await ctx.delete_child(r.PVC, pvc)
