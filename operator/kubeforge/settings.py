"""Operator settings: defaults a platform team sets once (images, addresses), from the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeforge import __version__

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
# Triton with its vLLM backend, for ModelDeployments serving a vLLM model: 26.02 ships vLLM 0.15.1, the
# vLLM that the rendered model.json is validated against (tests/llm, docs/vllm-notes.md)
DEFAULT_TRITON_VLLM_IMAGE = "nvcr.io/nvidia/tritonserver:26.02-vllm-python-py3"
# the image `make images` builds (hack/images.sh) and the chart installs: tagged with this version
DEFAULT_OPERATOR_IMAGE = f"ghcr.io/kubeforge/kubeforge-operator:{__version__}"
# the label the API server puts on every namespace, with its name
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# who may scrape Triton's metrics port by default (NetworkPolicyPeers): the monitoring namespace
DEFAULT_METRICS_FROM: tuple[dict[str, Any], ...] = (
    {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "monitoring"}}},
)


@dataclass(frozen=True)
class Settings:
    """What the builders need beyond a spec. Pure data; read once at start-up."""

    triton_image: str = DEFAULT_TRITON_IMAGE
    triton_vllm_image: str = DEFAULT_TRITON_VLLM_IMAGE
    # the image whose `kubeforge assemble-repository` lays out the model repository (init container)
    helper_image: str = DEFAULT_OPERATOR_IMAGE
    prometheus_address: str = "http://prometheus-operated.monitoring.svc:9090"
    cluster_domain: str = "cluster.local"
    # every object is reconciled again this often, even without a watch event
    resync_seconds: float = 600.0
    field_manager: str = "kubeforge"
    # read per-model state from Triton's repository index on a ready pod (off where pod IPs are not reachable)
    model_probe: bool = True
    # a ModelDeployment Degraded this long is Stalled (GitOps tools then call it Failed)
    stall_seconds: float = 300.0
    # an HPA target metric absent this long is reported as MetricAbsent
    metric_absent_seconds: float = 300.0
    # a failed model cache fill is retried after this long, doubling per retry up to an hour
    fill_retry_seconds: float = 60.0
    # at most this many ModelDeployments roll at once for a pod template change no edit asked for
    # (a new operator release or setting); each holds its slot until its rollout completed
    operator_rollouts: int = 1
    # the API server ends each watch after this long; a watch silent for this long plus a margin
    # is presumed dead (a half-open connection) and started again
    watch_seconds: int = 45
    # an edit (a new generation) is reconciled this long after it arrives: a burst of edits costs
    # one reconcile (and one write per child and status), not one per edit
    edit_coalesce_seconds: float = 0.5
    # a NetworkPolicy per ModelDeployment and TrainingJob (their pods admit only what they serve)
    network_policies: bool = True
    # who may reach Triton's HTTP and gRPC ports where a spec does not say (NetworkPolicyPeers);
    # empty: anyone
    inference_from: tuple[dict[str, Any], ...] = field(default_factory=tuple, hash=False)
    # who may scrape Triton's metrics port (NetworkPolicyPeers)
    metrics_from: tuple[dict[str, Any], ...] = field(default=DEFAULT_METRICS_FROM, hash=False)
    # the operator's own namespace (POD_NAMESPACE): its probe reaches every server
    operator_namespace: str = ""
    namespaces: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            triton_image=env.get("KUBEFORGE_TRITON_IMAGE", DEFAULT_TRITON_IMAGE),
            triton_vllm_image=env.get("KUBEFORGE_TRITON_VLLM_IMAGE", DEFAULT_TRITON_VLLM_IMAGE),
            helper_image=env.get("KUBEFORGE_HELPER_IMAGE", DEFAULT_OPERATOR_IMAGE),
            prometheus_address=env.get("KUBEFORGE_PROMETHEUS_ADDRESS", cls.prometheus_address),
            cluster_domain=env.get("KUBEFORGE_CLUSTER_DOMAIN", cls.cluster_domain),
            resync_seconds=float(env.get("KUBEFORGE_RESYNC_SECONDS", cls.resync_seconds)),
            stall_seconds=float(env.get("KUBEFORGE_STALL_SECONDS", cls.stall_seconds)),
            metric_absent_seconds=float(
                env.get("KUBEFORGE_METRIC_ABSENT_SECONDS", cls.metric_absent_seconds)
            ),
            fill_retry_seconds=float(env.get("KUBEFORGE_FILL_RETRY_SECONDS", cls.fill_retry_seconds)),
            edit_coalesce_seconds=float(
                env.get("KUBEFORGE_EDIT_COALESCE_SECONDS", cls.edit_coalesce_seconds)
            ),
            watch_seconds=int(env.get("KUBEFORGE_WATCH_SECONDS", cls.watch_seconds)),
            operator_rollouts=int(env.get("KUBEFORGE_OPERATOR_ROLLOUTS", cls.operator_rollouts)),
            model_probe=_flag(env.get("KUBEFORGE_MODEL_PROBE", "true")),
            network_policies=_flag(env.get("KUBEFORGE_NETWORK_POLICIES", "true")),
            inference_from=_peers(env, "KUBEFORGE_NETWORK_POLICY_INFERENCE_FROM", ()),
            metrics_from=_peers(env, "KUBEFORGE_NETWORK_POLICY_METRICS_FROM", DEFAULT_METRICS_FROM),
            operator_namespace=env.get("POD_NAMESPACE", ""),
        )


def _flag(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "off")


def _peers(
    env: Mapping[str, str], name: str, default: tuple[dict[str, Any], ...]
) -> tuple[dict[str, Any], ...]:
    """A JSON list of NetworkPolicyPeers from the environment (the chart renders it)."""
    if name not in env:
        return default
    try:
        peers = json.loads(env[name])
    except ValueError as err:
        raise ValueError(f"{name} is not JSON: {err}") from None
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise ValueError(f"{name} must be a JSON list of NetworkPolicy peers (objects)")
    return tuple(peers)
