"""Which errors a reconcile shows in status, and which it retries quickly.

Conflicts, throttling, server errors and timeouts pass (the work queue retries them with a fast
backoff). A name clash or an API error that no retry will fix (400, 403, 404, 422) becomes a
`ReconcileFailure`: a condition with the API server's message, one Warning Event, a slow retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from kubeforge.controllers.context import ChildConflict, PredecessorChild
from kubeforge.controllers.workqueue import Abandoned
from kubeforge.k8s.client import ApiError
from kubeforge.status.gitops import ReconcileFailure

MAX_MESSAGE = 1000


def abandoned(err: ApiError) -> Abandoned:
    """A namespace being deleted is not a failure: nothing more is created in it, nothing retried."""
    return Abandoned(f"namespace is being deleted, nothing more is created in it ({err.describe()})")


def as_failure(err: BaseException) -> ReconcileFailure | None:
    """The failure to show for `err`; None for an error that a quick retry may fix."""
    if isinstance(err, ChildConflict):
        return ReconcileFailure("ChildConflict", str(err)[:MAX_MESSAGE])
    if isinstance(err, PredecessorChild):
        message = f"{err}: the garbage collector removes it shortly, then this one is created"
        return ReconcileFailure("WaitingForPredecessor", message[:MAX_MESSAGE], waiting=True)
    if isinstance(err, ApiError) and not err.retryable:
        return ReconcileFailure(err.condition_reason, err.describe()[:MAX_MESSAGE])
    return None


async def settle(*calls: Awaitable[Any]) -> tuple[list[Any], ReconcileFailure | None]:
    """Run independent child applies concurrently and wait for all of them (none is left running).

    Returns their results (None where one failed) and the first failure to show; an error that
    is no failure (a conflict, a 5xx, a timeout) is raised once every call has finished.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, ApiError) and result.namespace_terminating:
            raise abandoned(result)
    failure: ReconcileFailure | None = None
    for result in results:
        if isinstance(result, BaseException):
            found = as_failure(result)
            if found is None:
                raise result
            failure = failure or found
    return [None if isinstance(r, BaseException) else r for r in results], failure
