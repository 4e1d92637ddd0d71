"""`python -m e2e.dev up|down|status`: the developer's local cluster behind `make dev` / `make dev-down`.

`up` starts (or reuses) a control plane with simulated GPU nodes in `.dev/`,
installs the CRDs, (re)starts the operator from this checkout in the
background, applies `examples/` and waits until their ModelDeployments are Ready
and their TrainingJobs Succeeded (other objects in the cluster are only reported). `down` stops everything `up` started.

Files: .dev/kubeconfig (admin), .dev/logs/<component>.log, .dev/operator.log,
.dev/run/*.pid and .dev/operator.pid.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import REPO_ROOT, Cluster, ClusterError
from e2e.kube import Kubectl, KubectlError, find_condition, wait_established
from e2e.lws import LeaderWorkerSetController
from e2e.operator_proc import RUNNER_MODULE, OperatorError, OperatorProcess, operator_available
from e2e.storage import bound_claim, volume_for_claim
from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.cache import cache_claim_name
from kubeforge.builders.output import TRAINED_BY_LABEL

DEV_DIR = REPO_ROOT / ".dev"
CRDS_DIR = REPO_ROOT / "crds"
EXAMPLES_DIR = REPO_ROOT / "examples"
SIM_EXIT_CODE = "sim.kubeforge.io/exit-code"


def _operator() -> OperatorProcess:
    return OperatorProcess(DEV_DIR / "kubeconfig", DEV_DIR / "operator.log", DEV_DIR / "operator.pid")


def _lws(cluster: Cluster) -> LeaderWorkerSetController:
    """LeaderWorkerSet's controller: examples/llm-multinode.yaml runs as a LeaderWorkerSet."""
    return LeaderWorkerSetController(cluster, state_dir=DEV_DIR / "lws")


def up(wait: float, finish_jobs_after: str | None) -> int:
    """Bring the dev environment up; 0 when every example reached its goal within `wait` seconds."""
    cluster = Cluster(DEV_DIR)
    if cluster.is_running():
        print(f"Reusing the cluster running in {_rel(DEV_DIR)} ({cluster.server})")
    else:
        print(f"Starting a local control plane in {_rel(DEV_DIR)} ...")
        started = time.monotonic()
        try:
            cluster.start()
        except ClusterError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(
            f"  etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok ready in "
            f"{time.monotonic() - started:.1f}s ({cluster.server})"
        )
    kubectl = cluster.kubectl()

    crds = sorted(CRDS_DIR.glob("*.yaml"))
    kubectl.apply(CRDS_DIR, server_side=True)
    wait_established(kubectl, CRDS_DIR)
    print(f"  CRDs established: {', '.join(p.stem for p in crds)}")

    lws = _lws(cluster)
    lws.stop()  # restarted on every `up`, like the operator: its webhooks then name its new port
    try:
        lws.start()
    except (RuntimeError, KubectlError) as error:
        print(f"error: LeaderWorkerSet controller: {error}", file=sys.stderr)
        return 1
    print(f"  LeaderWorkerSet controller running, log: {_rel(lws.log_file('lws'))}")

    operator = _operator()
    # Restarted on every `up`, so that it runs the code as it is now in the checkout.
    operator.stop()
    operator_running = False
    if operator_available():
        try:
            operator.start()
        except OperatorError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        operator_running = True
        print(f"  operator live at {operator.liveness_url}, log: {_rel(operator.log_file)}")
    else:
        print(f"  operator not started: {RUNNER_MODULE} does not exist yet in this checkout")

    examples = sorted(EXAMPLES_DIR.glob("*.yaml"))
    ready = True
    if examples:
        documents = [doc for path in examples for doc in yaml.safe_load_all(path.read_text()) if doc]
        for namespace, claim in sorted(_claims_without_volume(documents)):
            kubectl("create", "namespace", namespace, check=False)
            bound_claim(
                kubectl, namespace, claim, size="100Gi", volume_prefix="dev", host_root=DEV_DIR / "volumes"
            )
            print(
                f"  PersistentVolumeClaim {namespace}/{claim} bound to a local volume (used by the examples)"
            )
        for namespace, claim in sorted(_operator_claims(documents)):
            kubectl("create", "namespace", namespace, check=False)
            volume_for_claim(kubectl, namespace, claim, size="200Gi", host_root=DEV_DIR / "volumes")
            print(f"  a local volume waits for the operator's claim {namespace}/{claim} (a model cache)")
        try:
            kubectl.apply(EXAMPLES_DIR)
        except KubectlError as error:
            # Whatever was valid is applied; show the rest and carry on to the summary.
            print(f"error: {error}", file=sys.stderr)
            ready = False
        else:
            print(f"  applied {', '.join(_rel(p) for p in examples)}")
        if operator_running:
            ready = _wait_for_examples(kubectl, _example_keys(documents), wait, finish_jobs_after) and ready
    else:
        print(f"  no examples to apply ({_rel(EXAMPLES_DIR)} has no *.yaml)")

    print()
    print(kubectl("get", "modeldeployments,trainingjobs", "--all-namespaces", check=False).stdout.rstrip())
    print()
    print("Use it with:")
    print(f"  export KUBECONFIG={DEV_DIR / 'kubeconfig'}")
    print("Stop it with: make dev-down")
    return 0 if ready else 1


def down() -> int:
    """Stop the operator and the cluster that `up` started (by their pid files)."""
    operator = _operator()
    if operator.is_running():
        operator.stop()
        print("Stopped the operator")
    cluster = Cluster(DEV_DIR)
    lws = _lws(cluster)
    running = [
        name for name, proc in [*lws.processes.items(), *cluster.processes.items()] if proc.is_running()
    ]
    lws.stop()
    cluster.stop()
    print(f"Stopped {', '.join(running)}" if running else "No dev cluster was running")
    return 0


def status() -> int:
    cluster = Cluster(DEV_DIR)
    for name, proc in [
        *cluster.processes.items(),
        *_lws(cluster).processes.items(),
        ("operator", _operator().process),
    ]:
        pid = proc.pid()
        print(f"{name:24} {'running, pid ' + str(pid) if pid else 'stopped'}  {_rel(proc.log_file)}")
    return 0 if cluster.is_running() else 1


def _wait_for_examples(
    kubectl: Kubectl, examples: set[tuple[str, str, str]], timeout: float, finish_jobs_after: str | None
) -> bool:
    """Wait until the examples' ModelDeployments are Ready and their TrainingJobs Succeeded (or one failed).

    `examples` holds the (kind, namespace, name) that `up` applied; the ModelDeployments their
    TrainingJobs hand off to count with them. Other objects in the cluster (a developer's own) are
    reported, never waited for, and never fail `make dev`.

    kwok runs no containers, so a training pod would run forever: unless
    `finish_jobs_after` is None, pods owned by a Job get `sim.kubeforge.io/exit-code: "0"`
    and finish successfully that long after they started. A model cache's fill pod finishes the
    same way, with no summary: its ModelDeployment's status.cache is Ready without bytes or digest
    (there is no Hub offline; e2e/test_model_cache.py runs real fills).
    """
    print(
        f"  waiting up to {timeout:.0f}s for the examples' ModelDeployments Ready and TrainingJobs Succeeded ..."
    )
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        if finish_jobs_after is not None:
            finish_job_pods(kubectl, finish_jobs_after)
        pending = []
        failed = []
        others: dict[str, list[str]] = {}
        for obj in _custom_objects(kubectl):
            state = _example_state(obj)
            name = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
            if not _is_example(obj, examples):
                others.setdefault(state, []).append(name)
            elif state == "failed":
                failed.append(name)
            elif state == "pending":
                pending.append(name)
        if failed or not pending:
            _report_others(others)
        if failed:
            print(f"  failed: {', '.join(failed)}", file=sys.stderr)
            return False
        if not pending:
            print("  all examples reached their goal")
            return True
        time.sleep(1.0)
    print(f"  not there after {timeout:.0f}s: {', '.join(pending)}", file=sys.stderr)
    return False


def _report_others(others: dict[str, list[str]]) -> None:
    """One line per state of the objects `up` did not apply (not waited for)."""
    words = {"done": "at their goal", "pending": "not there yet", "failed": "failed"}
    for state in ("done", "pending", "failed"):
        if others.get(state):
            print(
                f"  other objects in the cluster, {words[state]} (not waited for): {', '.join(others[state])}"
            )


def _is_example(obj: dict[str, Any], examples: set[tuple[str, str, str]]) -> bool:
    """Applied by `up`, or a ModelDeployment an example TrainingJob handed its model to."""
    if _key(obj) in examples:
        return True
    trainer = ((obj.get("metadata") or {}).get("labels") or {}).get(TRAINED_BY_LABEL)
    return trainer is not None and ("TrainingJob", _key(obj)[1], trainer) in examples


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj["kind"], meta.get("namespace") or "default", meta["name"])


def _example_keys(documents: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of every ModelDeployment and TrainingJob among the applied documents."""
    return {_key(doc) for doc in documents if doc.get("kind") in ("ModelDeployment", "TrainingJob")}


def _custom_objects(kubectl: Kubectl) -> list[dict[str, Any]]:
    try:
        items: list[dict[str, Any]] = kubectl.json(
            "get", "modeldeployments,trainingjobs", "--all-namespaces"
        )["items"]
    except KubectlError:
        return []
    return items


def _example_state(obj: dict[str, Any]) -> str:
    """ "done", "failed" or "pending" for a ModelDeployment (Ready) or a TrainingJob (Succeeded)."""
    status = obj.get("status") or {}
    if obj["kind"] == "ModelDeployment":
        ready = (find_condition(obj, "Ready") or {}).get("status") == "True"
        return "done" if ready else "failed" if status.get("phase") == "Failed" else "pending"
    succeeded = (find_condition(obj, "Succeeded") or {}).get("status") == "True"
    if succeeded or status.get("phase") == "Succeeded":
        return "done"
    return "failed" if status.get("phase") == "Failed" else "pending"


def finish_job_pods(kubectl: Kubectl, after: str, namespace: str | None = None) -> None:
    """Job pods (training workers, cache fills) without an exit yet exit 0 `after` (kwok runs no
    container): in `namespace`, or in every namespace when None."""
    scope = ["--all-namespaces"] if namespace is None else ["--namespace", namespace]
    pods = kubectl.json("get", "pods", *scope)["items"]
    for pod in pods:
        owners = pod["metadata"].get("ownerReferences") or []
        annotations = pod["metadata"].get("annotations") or {}
        if any(o.get("kind") == "Job" for o in owners) and SIM_EXIT_CODE not in annotations:
            kubectl(
                "annotate",
                "pod",
                pod["metadata"]["name"],
                f"{SIM_EXIT_CODE}=0",
                f"sim.kubeforge.io/exit-after={after}",
                namespace=pod["metadata"]["namespace"],
                check=False,
            )


def _claims_without_volume(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(namespace, claim) of every PersistentVolumeClaim the examples use but do not define.

    Found generically: `pvc://<claim>/...` model sources and `claimName` fields.
    """
    defined = {
        (d["metadata"].get("namespace", "default"), d["metadata"]["name"])
        for d in documents
        if d.get("kind") == "PersistentVolumeClaim"
    }
    used = set()
    for doc in documents:
        namespace = (doc.get("metadata") or {}).get("namespace", "default")
        for key, value in _walk(doc):
            if isinstance(value, str) and value.startswith("pvc://"):
                used.add((namespace, value.removeprefix("pvc://").split("/")[0]))
            elif key == "claimName" and isinstance(value, str):
                used.add((namespace, value))
    return used - defined


def _operator_claims(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(namespace, claim) of the model cache claims the operator will create (`cache.size`): the
    local cluster has no provisioner, so a volume is pre-bound to each name."""
    claims = set()
    for doc in documents:
        if doc.get("kind") != "ModelDeployment" or not (doc.get("spec") or {}).get("cache"):
            continue
        meta = {"namespace": "default", **doc["metadata"], "uid": "dev"}
        md = ModelDeployment.model_validate({**doc, "metadata": meta})
        claim = cache_claim_name(md)
        if claim is not None and md.spec.cache is not None and md.spec.cache.size is not None:
            claims.add((meta["namespace"], claim))
    return claims


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    yield key, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.dev", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser(
        "up", help="start or reuse the cluster, (re)start the operator, apply the examples"
    )
    up_parser.add_argument(
        "--wait", type=float, default=180, help="seconds to wait for the examples (default 180)"
    )
    up_parser.add_argument(
        "--finish-jobs-after",
        default="10s",
        help='Job pods exit 0 this long after they start (kwok runs no containers); "never" to keep them running',
    )
    sub.add_parser("down", help="stop the operator and the cluster")
    sub.add_parser("status", help="which processes run, and their logs")
    args = parser.parse_args(argv)
    # Progress and errors (stderr) interleave in order even when piped.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    if args.command == "up":
        finish = None if args.finish_jobs_after == "never" else args.finish_jobs_after
        return up(args.wait, finish)
    if args.command == "down":
        return down()
    return status()


if __name__ == "__main__":
    sys.exit(main())
