"""Fault injection against the local control plane: the operator killed, the API server and etcd
restarted, SIGTERM mid-burst. After each storm everything converges: every owner observed its
generation, each has exactly one set of children applied from its current spec, no orphans, and no
TrainingJob counts a restart that no worker caused (their workers all exit 0).

The workload: 50 ModelDeployments and 10 TrainingJobs applied at once; kwok runs the pods, and the
training workers exit 0 after a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.convergence import namespace_problems
from e2e.faultproxy import FaultProxy
from e2e.kube import Kubectl, wait_for
from e2e.operator_proc import OperatorProcess
from kubeforge.settings import Settings

pytestmark = pytest.mark.e2e
MODEL_DEPLOYMENTS = 50
TRAINING_JOBS = 10
SEED = int(os.environ.get("KUBEFORGE_FAULT_SEED", "20261129"))


def _burst(namespace: str, workers_exit_after: str = "6s") -> str:
    items: list[dict[str, Any]] = []
    for i in range(MODEL_DEPLOYMENTS):
        items.append(
            {
                "apiVersion": "kubeforge.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": f"md-{i:02d}", "namespace": namespace},
                "spec": {"models": [{"name": "m", "source": "pvc://models/m", "format": "onnx"}]},
            }
        )
    for i in range(TRAINING_JOBS):
        items.append(
            {
                "apiVersion": "kubeforge.io/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": f"tj-{i:02d}", "namespace": namespace},
                "spec": {
                    "image": "ghcr.io/kubeforge/trainer:0.1.0",
                    "workers": 2,
                    "podMetadata": {
                        "annotations": {
                            "sim.kubeforge.io/exit-code": "0",
                            "sim.kubeforge.io/exit-after": workers_exit_after,
                        }
                    },
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _kill(operator: OperatorProcess) -> None:
    pid = operator.process.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: operator.process.exit_code() is not None, timeout=10, message="the operator gone")


def _settled(kubectl: Kubectl, namespace: str, timeout: float = 180) -> None:
    """Everything converged and every training job succeeded without a restart."""
    settings = Settings.from_env()
    last: list[str] = []

    def done() -> bool:
        nonlocal last
        last = namespace_problems(kubectl, namespace, settings)
        jobs = kubectl.json("get", "tj", namespace=namespace)["items"]
        last += [
            f"TrainingJob {j['metadata']['name']}: phase {j.get('status', {}).get('phase')}"
            for j in jobs
            if (j.get("status") or {}).get("phase") != "Succeeded"
        ]
        return not last

    try:
        wait_for(done, timeout=timeout, interval=2.0, message="convergence")
    except TimeoutError:
        pytest.fail(f"not converged after {timeout}s: {last[:20]}")
    for job in kubectl.json("get", "tj", namespace=namespace)["items"]:
        status = job["status"]
        name = job["metadata"]["name"]
        assert (status["restarts"], status["attempt"], status.get("preemptions") or 0) == (0, 0, 0), (
            f"{name} counted a restart that no worker caused: {status}"
        )


def test_sigkill_at_random_moments_during_a_burst(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str
) -> None:
    rng = random.Random(SEED)
    own_operator.start()
    kubectl.apply(_burst(namespace))
    kills = 0
    for _ in range(10):
        time.sleep(rng.uniform(0.2, 2.5))
        _kill(own_operator)
        kills += 1
        own_operator.start()
    assert kills == 10
    _settled(kubectl, namespace)


def test_api_server_and_etcd_restarts_during_a_burst(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str, cluster: Cluster
) -> None:
    own_operator.start()
    kubectl.apply(_burst(namespace, workers_exit_after="10s"))
    time.sleep(2)
    apiserver = cluster.restart("kube-apiserver")
    time.sleep(2)
    etcd = cluster.restart("etcd")
    _settled(kubectl, namespace)
    assert own_operator.is_running(), "the operator must ride out both restarts"
    log = own_operator.log_text()
    assert "informer" in log  # it noticed the lost watches and came back (see the log lines)
    print(f"kube-apiserver back in {apiserver:.1f}s, etcd in {etcd:.1f}s")


def test_sigterm_during_a_burst_finishes_in_flight_work_and_exits_0(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str
) -> None:
    bound = 20.0
    own_operator.start(extra_args=("--shutdown-seconds", str(bound)))
    kubectl.apply(_burst(namespace))
    time.sleep(1.5)  # mid-burst: reconciles in flight
    pid = own_operator.process.pid()
    assert pid is not None
    sent = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: own_operator.process.exit_code() is not None, timeout=bound + 15, message="exit")
    took = time.monotonic() - sent
    code = own_operator.process.exit_code()
    log = own_operator.log_text()
    assert code == 0, f"exit status {code}; {log[-2000:]}"
    assert took < bound + 5, f"took {took:.1f}s to exit"
    assert "were cancelled" not in log  # no reconcile was cut mid-way
    for job in kubectl.json("get", "tj", namespace=namespace)["items"]:
        assert (job.get("status") or {}).get("attempt", 0) == 0  # no half-decided attempt
    own_operator.start()
    _settled(kubectl, namespace)


# -- through the fault-injecting proxy -------------------------------------------------------------


def _md(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"models": [{"name": "m", "source": "pvc://models/m", "format": "onnx"}]},
    }


def _observed(kubectl: Kubectl, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        result = kubectl("get", "md", name, "-o", "json", namespace=namespace, check=False)
        if result.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(result.stdout)
        return (
            obj
            if (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
            else None
        )

    return wait_for(ready, timeout=timeout, message=f"md/{name} reconciled")


@contextmanager
def _behind_proxy(
    operator: OperatorProcess, cluster: Cluster, state: Path, **start: Any
) -> Iterator[FaultProxy]:
    """The operator started with a fault-injecting proxy between it and the API server."""
    with FaultProxy(cluster.kubeconfig, state) as proxy:
        operator.kubeconfig = proxy.kubeconfig
        operator.start(metrics=True, **start)
        yield proxy


def _cached(operator: OperatorProcess, kind: str) -> float:
    return sum(
        value
        for name, labels, value in operator.metrics()
        if name == "kubeforge_cache_objects" and labels.get("kind") == kind
    )


def test_a_relist_after_410_recreates_deleted_children_and_forgets_deleted_owners(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    with _behind_proxy(own_operator, cluster, tmp_path) as proxy:
        for name in ("keep", "gone"):
            kubectl.apply(json.dumps(_md(namespace, name)))
            _observed(kubectl, namespace, name)
        keep_uid = kubectl.json("get", "md", "keep", namespace=namespace)["metadata"]["uid"]
        before = _cached(own_operator, "ModelDeployment")

        # the gap: nothing reaches the operator while a child and an owner are deleted
        proxy.pause()
        kubectl("delete", "service", "keep", namespace=namespace)
        kubectl("delete", "md", "gone", namespace=namespace)
        wait_for(
            lambda: kubectl("get", "deployment", "gone", namespace=namespace, check=False).returncode != 0,
            timeout=60,
            message="the garbage collector removing the deleted owner's children",
        )
        proxy.drop_all()  # the watches break; what was held for them is lost
        proxy.gone_watches(1000)  # and every resumed watch is told its version is too old: a re-list
        proxy.resume()

        def recreated() -> bool:
            result = kubectl("get", "service", "keep", "-o", "json", namespace=namespace, check=False)
            return (
                result.returncode == 0
                and json.loads(result.stdout)["metadata"]["ownerReferences"][0]["uid"] == keep_uid
            )

        wait_for(recreated, timeout=60, message="the deleted child recreated")

        # The cache holds exactly what the API server holds: "gone" forgotten. Counted against the
        # server, not as before - 1, since other test files' namespaces on this cluster may still
        # be draining their ModelDeployments meanwhile (seen with e2e files run side by side).
        def mirrors_the_server() -> bool:
            on_server = len(kubectl.json("get", "md", "--all-namespaces")["items"])
            return _cached(own_operator, "ModelDeployment") == on_server

        assert kubectl("get", "md", "gone", namespace=namespace, check=False).returncode != 0
        wait_for(mirrors_the_server, timeout=30, message="the deleted owner forgotten by the cache")
        assert _cached(own_operator, "ModelDeployment") <= before - 1
        time.sleep(2)
        calls = proxy.requests(path_regex=r"/gone(/|$|\?)")
        time.sleep(12)  # longer than the slowest retry of a failing reconcile would wait at first
        assert proxy.requests(path_regex=r"/gone(/|$|\?)") == calls, "requests for a deleted owner"
    assert "listing again" in own_operator.log_text()


def test_a_silently_dead_watch_is_noticed_and_watched_again(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    """A half-open connection: the watches deliver nothing, not even their end, and no reset comes.
    The operator asks the server to end each watch after KUBEFORGE_WATCH_SECONDS (10 s here; 45 by
    default) and gives up on one silent for 15 s more: a new object is seen within about 25 s."""
    watch_seconds, margin = 10, 15
    with _behind_proxy(
        own_operator, cluster, tmp_path, env={"KUBEFORGE_WATCH_SECONDS": str(watch_seconds)}
    ) as proxy:
        kubectl.apply(json.dumps(_md(namespace, "first")))
        _observed(kubectl, namespace, "first")
        assert proxy.silence_watches() >= 2
        silenced = time.monotonic()
        kubectl.apply(json.dumps(_md(namespace, "second")))
        _observed(kubectl, namespace, "second", timeout=90)
        noticed = time.monotonic() - silenced
    assert noticed <= watch_seconds + margin + 10, noticed
    assert "the connection is presumed dead" in own_operator.log_text()


def _training_job(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": namespace},
        "spec": {
            "image": "trainer:e2e",
            "workers": 2,
            "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 1},
        },
    }


def test_a_refused_status_write_of_a_final_failure_never_runs_the_job_again(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, cluster: Cluster, tmp_path: Path
) -> None:
    """An etcd leader change answers the failure's status write with 503 (twice): the workers
    still running are stopped only once the failure is recorded, and the Job is never created again."""
    with _behind_proxy(own_operator, cluster, tmp_path) as proxy:
        kubectl.apply(json.dumps(_training_job(namespace)))
        wait_for(
            lambda: (
                kubectl.json("get", "tj", "train", namespace=namespace).get("status", {}).get("phase")
                == "Running"
            ),
            timeout=60,
            message="train running",
        )
        proxy.inject(503, "PATCH", r"/trainingjobs/train/status$", count=2)
        failed_at = time.monotonic()
        selector = "batch.kubernetes.io/job-name=train-0,batch.kubernetes.io/job-completion-index=1"
        kubectl("annotate", "pods", "-l", selector, "sim.kubeforge.io/exit-code=1", namespace=namespace)

        def failed() -> dict[str, Any] | None:
            tj = kubectl.json("get", "tj", "train", namespace=namespace)
            return tj if tj.get("status", {}).get("phase") == "Failed" else None

        tj = wait_for(failed, timeout=60, message="train failed")
        time.sleep(3)
        assert proxy.requests("PATCH", r"/trainingjobs/train/status$", status=503) == 2
        # the failed attempt's Job was not applied (created) again after the failure (the dry runs
        # that ask whether the namespace is being deleted name the next attempt's Job)
        assert proxy.requests("PATCH", r"/jobs/train-0$", since=failed_at) == 0
    assert tj["status"]["lastFailure"]["exitCode"] == 1
    assert (tj["status"]["attempt"], tj["status"]["restarts"]) == (0, 0)


def test_injected_conflicts_throttling_and_server_errors_back_off_and_converge(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    with _behind_proxy(own_operator, cluster, tmp_path) as proxy:
        proxy.inject(409, "PATCH", r"/deployments/", count=5)
        proxy.inject(429, "PATCH", r"/services/", count=5)
        proxy.inject(500, "PATCH", r"/modeldeployments/[^/]+/status", count=5)
        for i in range(5):
            kubectl.apply(json.dumps(_md(namespace, f"md-{i}")))
        settings = Settings.from_env()
        wait_for(
            lambda: not namespace_problems(kubectl, namespace, settings), timeout=90, message="convergence"
        )
        writes = proxy.requests(method="PATCH") + proxy.requests(method="POST") + proxy.requests(method="PUT")
    # 5 objects x (Deployment, Service, a few status writes) + the 15 refused: a storm would be hundreds
    assert writes <= 60, f"{writes} writes for 5 ModelDeployments and 15 injected errors"


@pytest.mark.serial  # Lease durations and renew deadlines of a few seconds: alone
def test_two_replicas_fail_over_and_a_partitioned_leader_never_writes_after_its_lease(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    args = ("--leader-elect", "--leader-election-namespace", namespace)
    second = OperatorProcess(
        cluster.kubeconfig, cluster.state_dir / "replica-b.log", cluster.state_dir / "run" / "replica-b.pid"
    )

    def holder() -> str:
        lease = kubectl.json("get", "lease", "kubeforge-leader", namespace=namespace)
        return str(lease["spec"].get("holderIdentity") or "")

    with _behind_proxy(
        own_operator, cluster, tmp_path, extra_args=args, env={"POD_NAME": "replica-a"}
    ) as proxy:
        wait_for(lambda: holder() == "replica-a", timeout=30, message="replica-a leading")
        try:
            second.start(metrics=True, extra_args=args, env={"POD_NAME": "replica-b"})
            kubectl.apply(json.dumps(_md(namespace, "first")))
            _observed(kubectl, namespace, "first")
            assert second.api_calls()["apply"] == 0  # the standby reads, never writes

            # partition the leader: the standby takes over once the Lease expires
            proxy.pause()
            partitioned = time.monotonic()
            wait_for(lambda: holder() == "replica-b", timeout=30, message="replica-b leading")
            took_over = time.monotonic()
            kubectl.apply(json.dumps(_md(namespace, "second")))
            _observed(kubectl, namespace, "second")
            proxy.resume()
            time.sleep(6)  # whatever replica-a still held back now reaches the proxy
            late = [
                r
                for r in proxy.records()
                if r.method in ("POST", "PUT", "PATCH", "DELETE")
                and r.forwarded is not None
                and r.forwarded > took_over
                and "/leases/" not in r.path
            ]
            assert late == [], f"the old leader wrote after losing the Lease: {late}"
            print(f"partition -> standby leading: {took_over - partitioned:.1f}s")

            # kill the leader: the old one, healed, takes over again
            pid = second.process.pid()
            assert pid is not None
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            kubectl.apply(json.dumps(_md(namespace, "third")))
            _observed(kubectl, namespace, "third", timeout=40)
            failover = time.monotonic() - killed
            assert holder() == "replica-a"
            assert failover < 20, f"failover took {failover:.1f}s"
            print(f"leader killed -> first reconcile by the new leader: {failover:.1f}s")
        finally:
            second.stop()
