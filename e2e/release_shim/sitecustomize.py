"""A stand-in for another operator release, for the upgrade tests (e2e/test_upgrade.py).

Put this folder on PYTHONPATH and set KUBEFORGE_E2E_RELEASE: every pod template the builders make
(the TrainingJob's workers, the Triton server) gets one more env var, as a new release's builders
would render the same spec differently. Without KUBEFORGE_E2E_RELEASE nothing changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

_RELEASE = os.environ.get("KUBEFORGE_E2E_RELEASE")


def _with_release_env(build: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    @functools.wraps(build)
    def wrapped(*args: Any, **kwargs: Any) -> dict[str, Any]:
        container = build(*args, **kwargs)
        container["env"] = [
            *(container.get("env") or []),
            {"name": "KUBEFORGE_E2E_RELEASE", "value": _RELEASE},
        ]
        return container

    return wrapped


if _RELEASE:
    from kubeforge.builders import modeldeployment, trainingjob

    trainingjob.worker_container = _with_release_env(trainingjob.worker_container)  # type: ignore[assignment]
    modeldeployment.triton_container = _with_release_env(modeldeployment.triton_container)  # type: ignore[assignment]
