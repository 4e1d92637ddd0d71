"""Fixtures of the end-to-end tests: a real control plane for the session, kubectl, the operator.

    def test_x(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
        kubectl.apply(MANIFEST, namespace=namespace)
        wait_condition(kubectl, "md", "resnet50", "Ready", namespace=namespace)

One cluster per test session, started under `.e2e/run-*` (kept, with its logs,
when a test failed; removed otherwise); the CRDs in `crds/` are applied to it
once. Missing binaries are built before the first test (e2e/binaries.sh), never
skipped: CI must run these tests.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml

from e2e import durations, groups
from e2e.cluster import REPO_ROOT, TOOLS, Cluster, ensure_binaries
from e2e.kube import Kubectl, fresh_namespace, wait_condition, wait_established, wait_for
from e2e.lws import LeaderWorkerSetController
from e2e.operator_proc import OperatorProcess, operator_available
from e2e.prometheus import Prometheus
from e2e.storage import bound_claim
from tests.harness import missing

E2E_DIR = Path(__file__).resolve().parent
STATE_ROOT = REPO_ROOT / ".e2e"
CRDS_DIR = REPO_ROOT / "crds"
_OPERATOR_LOG_OFFSET = pytest.StashKey[int]()
_OPERATOR_LOG_MAX = 30_000


# -- collection -----------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under e2e/ `e2e`, so `-m "not e2e"` leaves them all out, and order them for
    the pytest-xdist workers (`make test-e2e`, e2e/groups.py): groups longest first by the times in
    e2e/durations.tsv (a group it does not know first of all), so the last group to start is a short
    one; tests keep their order within a group.
    """
    e2e = [item for item in items if E2E_DIR in Path(str(item.path)).parents]
    if not e2e:
        return
    seconds = durations.read()
    for item in e2e:
        item.add_marker(pytest.mark.e2e)
    e2e.sort(key=lambda item: -seconds.get(groups.group_of(item.nodeid), float("inf")))
    others = [item for item in items if E2E_DIR not in Path(str(item.path)).parents]
    items[:] = others + e2e


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, with the tests marked `serial` as one more file (e2e/groups.py)."""
    if config.getoption("dist") == "loadfile":
        return groups.GroupScheduling(config, log)
    return None


# -- the cluster ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's control plane with the simulated nodes and the kubeforge CRDs Established."""
    STATE_ROOT.mkdir(exist_ok=True)
    _clean_abandoned_runs()
    state_dir = Path(tempfile.mkdtemp(prefix="run-", dir=STATE_ROOT))
    (state_dir / "owner.pid").write_text(f"{os.getpid()}\n")
    cluster = Cluster(state_dir, bin_dir=ensure_binaries(tools=tuple(TOOLS)))
    try:
        cluster.start()
        kubectl = cluster.kubectl()
        kubectl.apply(CRDS_DIR, server_side=True)
        wait_established(kubectl, CRDS_DIR)
        _wait_openapi_published(kubectl)
        yield cluster
    finally:
        cluster.stop()
        if request.session.testsfailed:
            shutil.rmtree(state_dir / "etcd", ignore_errors=True)
            print(f"\ne2e cluster logs kept in {state_dir / 'logs'}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


def _wait_openapi_published(kubectl: Kubectl) -> None:
    """Wait until the API server publishes the CRDs' schemas (after Established, asynchronously).

    `kubectl explain` and client-side validation read them from /openapi/v3.
    """
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        prefix = ".".join(reversed(group.split(".")))
        for version in (v["name"] for v in crd["spec"]["versions"] if v["served"]):
            schema = f"{prefix}.{version}.{kind}"

            def published(url: str = f"/openapi/v3/apis/{group}/{version}", schema: str = schema) -> bool:
                result = kubectl("get", "--raw", url, check=False)
                return result.returncode == 0 and schema in json.loads(result.stdout)["components"]["schemas"]

            wait_for(published, timeout=30, message=f"OpenAPI v3 schema {schema}")


def _clean_abandoned_runs() -> None:
    """Stop and remove the clusters of sessions that died without cleaning up (kill -9, a crash).

    A run whose owner is still alive belongs to a concurrent session (another
    checkout's engineer, another terminal) and is left alone.
    """
    for run in STATE_ROOT.glob("run-*"):
        try:
            owner = int((run / "owner.pid").read_text())
        except (FileNotFoundError, ValueError):
            owner = 0
        if owner and Path(f"/proc/{owner}").exists():
            continue
        Cluster(run).stop(timeout=5)
        LeaderWorkerSetController(Cluster(run)).stop(timeout=5)
        OperatorProcess(run / "kubeconfig", run / "operator.log", run / "run" / "operator.pid").stop(
            timeout=5
        )
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    """`kubectl(*args, namespace=None, input=None, check=True)` against the session's cluster.

    Returns the CompletedProcess; raises KubectlError (with stderr) on failure unless
    check=False. Also `kubectl.json(*args)` and `kubectl.apply(path_or_yaml, namespace)`.
    """
    return cluster.kubectl()


@pytest.fixture(scope="session")
def apply(kubectl: Kubectl) -> Callable[..., CompletedProcess[str]]:
    """`apply(path_or_yaml_str, namespace=None)`: `kubectl apply -f` a file, folder or YAML text."""
    return kubectl.apply


@pytest.fixture(scope="session", name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """`wait_for(predicate, timeout=30, interval=0.2)`: poll until truthy, return the value."""
    return wait_for


@pytest.fixture(scope="session", name="wait_condition")
def wait_condition_fixture(kubectl: Kubectl) -> Callable[..., dict[str, Any]]:
    """`wait_condition(kind, name, condition_type, status="True", namespace=None, timeout=60)`."""
    return functools.partial(wait_condition, kubectl)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (its pods may be created at once), deleted afterwards."""
    slug = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    name = f"e2e-{slug[:40].rstrip('-')}-{uuid.uuid4().hex[:5]}"
    with fresh_namespace(kubectl, name):
        yield name


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Iterator[Any]:
    """An official `kubernetes` client ApiClient for the cluster (admin)."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    yield api_client
    api_client.close()


# -- the operator ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    """`python -m kubeforge run` against the cluster, live (its liveness endpoint answers 200).

    Serves metrics on a free port (`operator.reconciles()`, `operator.api_calls()`).
    Its log is `operator.log_file`; the part written during a failed test is shown in
    the test's report.
    """
    if not operator_available():
        missing("the operator's entry point (kubeforge.controllers.runner) is missing: run `make install`")
    proc = OperatorProcess(
        cluster.kubeconfig, cluster.state_dir / "operator.log", cluster.state_dir / "run" / "operator.pid"
    )
    proc.start(metrics=True)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def lws(cluster: Cluster) -> Iterator[LeaderWorkerSetController]:
    """LeaderWorkerSet's controller with its CRD and webhooks (e2e/lws.py), for the rest of the session.

    Its pod webhook sees only pods labelled `leaderworkerset.sigs.k8s.io/name`; other tests' pods
    never reach it.
    """
    controller = LeaderWorkerSetController(cluster).start()
    yield controller
    controller.stop()


@pytest.fixture
def models_claim(kubectl: Kubectl, namespace: str) -> str:
    """A bound claim `models` in the test's namespace: where the examples' model sources live."""
    bound_claim(kubectl, namespace, "models")
    return "models"


@pytest.fixture
def analysis_prometheus(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Prometheus]:
    """A real Prometheus scraping every second, for one test (`set_targets` gives it the pod servers):
    what the operator's canary analysis queries (KUBEFORGE_PROMETHEUS_ADDRESS)."""
    server = Prometheus(
        cluster.state_dir / f"prometheus-{request.node.name[:40]}", scrape_interval=1.0
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def crds_restored(kubectl: Kubectl) -> Iterator[None]:
    """For a test that applies other CRDs: this checkout's are applied again afterwards."""
    yield
    kubectl.apply(REPO_ROOT / "crds", server_side=True)


@pytest.fixture
def own_operator(cluster: Cluster, operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """An operator of the test's own (not started yet: `own_operator.start(env=...)`), for tests that
    kill, restart or configure it. The session's operator is stopped meanwhile (one operator at a
    time) and started again afterwards."""
    operator.stop()
    mine = OperatorProcess(
        cluster.kubeconfig,
        cluster.state_dir / "own-operator.log",
        cluster.state_dir / "run" / "own-operator.pid",
    )
    try:
        yield mine
    finally:
        mine.stop()
        operator.start(metrics=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    operator = getattr(item, "funcargs", {}).get("operator")
    if isinstance(operator, OperatorProcess):
        item.stash[_OPERATOR_LOG_OFFSET] = operator.log_size()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    operator = getattr(item, "funcargs", {}).get("operator")
    if report.when != "call" or not report.failed or not isinstance(operator, OperatorProcess):
        return
    text = operator.log_text(item.stash.get(_OPERATOR_LOG_OFFSET, 0))
    if len(text) > _OPERATOR_LOG_MAX:
        text = "[...]\n" + text[-_OPERATOR_LOG_MAX:]
    if not operator.is_running():
        text += "\n[the operator is no longer running]"
    report.sections.append((f"operator log ({operator.log_file})", text))
