"""`kubeforge run`: start kopf with our handlers, settings and memo."""

from __future__ import annotations

import dataclasses
import logging

import kopf
from kopf._core.engines.peering import Identity

from kubeforge.controllers.leader import LeaseSettings, default_identity
from kubeforge.settings import Settings


def run_operator(
    namespaces: tuple[str, ...],
    liveness: str,
    metrics_port: int,
    verbose: bool,
    metrics_host: str = "0.0.0.0",
    workers: int = 16,
    leader_election: bool = False,
    lease_namespace: str = "default",
    lease_name: str = "kubeforge-leader",
    shutdown_seconds: float = 20.0,
) -> int:
    """Run until interrupted; returns the exit code."""
    import kubeforge.controllers.handlers  # noqa: F401 - registers the kopf handlers

    logging.getLogger("kubeforge").setLevel(logging.DEBUG if verbose else logging.INFO)
    # kopf announces every handled watch event at INFO; our reconcilers log what matters
    logging.getLogger("kopf.objects").setLevel(logging.INFO if verbose else logging.WARNING)
    settings = dataclasses.replace(Settings.from_env(), namespaces=namespaces)
    # One identity for the Lease and for kopf, which would otherwise ask the passwd file for the user's
    # name: the images run as a uid that has no entry there (65532, or the pod's runAsUser).
    identity = default_identity()
    memo = kopf.Memo(
        options={
            "settings": settings,
            "metrics_port": metrics_port,
            "metrics_host": metrics_host,
            "workers": workers,
            "lease": (
                LeaseSettings(namespace=lease_namespace, name=lease_name, identity=identity)
                if leader_election
                else None
            ),
            "shutdown_seconds": shutdown_seconds,
        }
    )
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness or None,
        memo=memo,
        identity=Identity(identity),
    )
    return 0
