"""The kubelet's Secret check for the simulated nodes: a pod whose containers refer to a Secret
(or a key of one) that does not exist does not start.

A real kubelet resolves `envFrom[].secretRef` and `env[].valueFrom.secretKeyRef` (unless optional)
before it starts a container, and reports the container waiting with reason
CreateContainerConfigError (`secret "x" not found`, `couldn't find key K in Secret ns/x`), retrying
until the Secret is there. kwok has no view of Secrets, so this process (one per local cluster,
started with it) annotates each scheduled, not yet started pod that needs a Secret with what the
kubelet would say (`sim.kubeforge.io/config-error`), or with "" once every Secret it needs exists;
kwok's `pod-config-error` stage (e2e/kwok/stages/pod.yaml) reports the waiting containers from a
non-empty value, and its `pod-ready` stage starts such a pod once the value is "".

    python -m e2e.secretrefs --kubeconfig <cluster>/kubeconfig
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

ANNOTATION = "sim.kubeforge.io/config-error"
POLL_SECONDS = 0.5
log = logging.getLogger("secretrefs")


def _secret_refs(pod: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(Secret, key or None for all of it) that the pod's containers need (optional ones left out)."""
    refs: list[tuple[str, str | None]] = []
    spec = pod["spec"]
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref and not ref.get("optional"):
                refs.append((ref["name"], None))
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                refs.append((ref["name"], ref["key"]))
    return refs


def config_error(pod: dict[str, Any], secret: Any) -> str | None:
    """What a kubelet would refuse the pod's containers for ("" when nothing), None when the pod
    needs no Secret; `secret(ns, name)` is the Secret's data keys, or None when it does not exist."""
    refs = _secret_refs(pod)
    if not refs:
        return None
    ns = pod["metadata"]["namespace"]
    for name, key in refs:
        keys = secret(ns, name)
        if keys is None:
            return f'secret "{name}" not found'
        if key is not None and key not in keys:
            return f"couldn't find key {key} in Secret {ns}/{name}"
    return ""


def check_once(core: Any) -> None:
    found: dict[tuple[str, str], frozenset[str] | None] = {}

    def secret(ns: str, name: str) -> frozenset[str] | None:
        if (ns, name) not in found:
            try:
                data = core.read_namespaced_secret(name, ns).data or {}
                found[ns, name] = frozenset(data)
            except ApiException as err:
                if err.status != 404:
                    raise
                found[ns, name] = None
        return found[ns, name]

    raw = json.loads(
        core.list_pod_for_all_namespaces(field_selector="status.phase=Pending", _preload_content=False).data
    )
    for pod in raw.get("items") or []:
        meta = pod["metadata"]
        if (
            meta.get("deletionTimestamp")
            or not pod["spec"].get("nodeName")
            or (pod.get("status") or {}).get("podIP")
        ):
            continue
        now = config_error(pod, secret)
        if now is None or (meta.get("annotations") or {}).get(ANNOTATION) == now:
            continue
        log.info("%s/%s: %s", meta["namespace"], meta["name"], now or "its Secrets are there")
        try:
            core.patch_namespaced_pod(
                meta["name"], meta["namespace"], {"metadata": {"annotations": {ANNOTATION: now}}}
            )
        except ApiException as err:
            if err.status != 404:
                raise


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    core = k8s_client.CoreV1Api(k8s_client.ApiClient(configuration))
    while True:
        try:
            check_once(core)
        except (
            ApiException,
            OSError,
            HTTPError,
        ) as err:  # the API server restarting (fault tests): try again
            log.warning("check failed: %s", err)
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    raise SystemExit(main())
