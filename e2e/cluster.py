"""A real Kubernetes control plane on loopback, with kwok simulating GPU nodes.

    cluster = Cluster(Path(".e2e/run-1"))
    cluster.start()            # etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
    cluster.kubectl("get", "nodes")
    cluster.stop()

Every process runs from the pinned binaries that `e2e/binaries.sh` builds (or
downloads) into ~/.cache/kubeforge/bin, in the background with a log file and
a pid file under the state directory; all ports are free loopback ports chosen
at start, so several clusters (the `make dev` one and a test session's) run
side by side. Only nodes annotated `kwok.x-k8s.io/node=fake` are simulated
(e2e/nodes.py); pods on them follow the stages in e2e/kwok/stages/.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2e.kube import Kubectl
from e2e.net import component_health, free_ports, http_status
from e2e.nodes import SimulatedNode, default_nodes
from e2e.pki import FRONT_PROXY_CLIENT, CertKey, ClusterPKI, create_pki, write_kubeconfig
from e2e.procs import ManagedProcess, stop_all

log = logging.getLogger(__name__)

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
KWOK_DIR = E2E_DIR / "kwok"
BINARIES_SCRIPT = E2E_DIR / "binaries.sh"

SERVICE_CIDR = "10.96.0.0/16"
# The first address of SERVICE_CIDR: the ClusterIP of the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# ...and, beside kwok, the kubelet's Secret check for its pods (e2e/secretrefs.py, this Python)
SECRET_CHECK = "secretrefs"
# The e2e/binaries.sh components that leave COMPONENTS.
CONTROL_PLANE_PARTS = ("kubernetes", "etcd", "kwok")
# What the e2e tests run beside the cluster: e2e/binaries.sh component -> the binaries it leaves.
# kstatus: Flux's status library (e2e/kstatus.py); netpol: cyclonus's NetworkPolicy engine
# (e2e/netpol.py); lws: LeaderWorkerSet's controller (e2e/lws.py); the rest: the autoscaling stack
# (e2e/monitoring.py).
TOOLS: dict[str, tuple[str, ...]] = {
    "kstatus": ("kstatus",),
    "netpol": ("netpol",),
    "lws": ("lws",),
    "prometheus": ("prometheus",),
    "prometheus-adapter": ("prometheus-adapter",),
    "keda": ("keda", "keda-adapter"),
    "traefik": ("traefik",),  # and beside it the Gateway API's CRDs (e2e/gateway.py)
}
# The cluster's own files under the state directory; anything else there (e.g. the dev
# operator's log) is left alone when a cluster is recreated.
_OWNED = ("cluster.json", "kubeconfig", "pki", "kubeconfigs", "etcd", "kwok", "logs", "run", "kubectl-cache")


class ClusterError(RuntimeError):
    """The control plane failed to start; the message ends with the failing component's log."""


def default_cache_dir() -> Path:
    """Where e2e/binaries.sh keeps the binaries (its KUBEFORGE_CACHE)."""
    return Path(os.environ.get("KUBEFORGE_CACHE") or Path.home() / ".cache" / "kubeforge")


def ensure_binaries(cache_dir: Path | None = None, tools: Sequence[str] = ()) -> Path:
    """Return the folder with the control-plane binaries and the `tools` (TOOLS keys), building any
    that are missing.

    Always goes through e2e/binaries.sh, which owns the pinned versions: with
    everything cached it only compares version stamps (milliseconds); otherwise it
    builds from the Go module proxy (minutes on 2 cores, progress on stderr). Only
    what is asked for is built: `make dev` needs no autoscaling stack.
    """
    env = dict(os.environ, KUBEFORGE_CACHE=str(cache_dir or default_cache_dir()))
    result = subprocess.run(
        ["bash", str(BINARIES_SCRIPT), *CONTROL_PLANE_PARTS, *tools],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ClusterError(f"{BINARIES_SCRIPT} failed with exit status {result.returncode}")
    bin_dir = Path(lines[-1])
    tool_binaries = [name for tool in tools for name in TOOLS[tool]]
    missing = [name for name in (*COMPONENTS, *tool_binaries) if not (bin_dir / name).is_file()]
    if missing:
        raise ClusterError(f"{BINARIES_SCRIPT} left no {', '.join(missing)} in {bin_dir}")
    return bin_dir


@functools.cache
def tool_binary(component: str, name: str | None = None) -> Path:
    """The binary `name` (default: `component`) of one e2e/binaries.sh component (a TOOLS key), built if missing.

    Asked of the script once per process (milliseconds when cached: it only compares version
    stamps then), so a tool run per assertion (kstatus, netpol) does not run it each time.
    """
    result = subprocess.run(
        ["bash", str(BINARIES_SCRIPT), component], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ClusterError(f"{BINARIES_SCRIPT} {component} failed with exit status {result.returncode}")
    binary = Path(lines[-1]) / (name or component)
    if not binary.is_file():
        raise ClusterError(f"{BINARIES_SCRIPT} left no {binary.name} in {binary.parent}")
    return binary


@dataclass(frozen=True)
class Ports:
    """The loopback ports of one cluster (saved in cluster.json)."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


class Cluster:
    """One local control plane whose files all live under `state_dir`.

    `extra_args` adds flags per component (keys as in COMPONENTS), e.g. for a
    benchmark that wants `--max-requests-inflight` raised; `nodes` replaces the
    default simulated nodes.
    """

    def __init__(
        self,
        state_dir: Path,
        bin_dir: Path | None = None,
        nodes: Sequence[SimulatedNode] | None = None,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self._bin_dir = bin_dir
        self.nodes = list(nodes) if nodes is not None else default_nodes()
        self.extra_args = {name: list(args) for name, args in (extra_args or {}).items()}
        unknown = set(self.extra_args) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"extra_args for unknown components: {sorted(unknown)}")
        # Every component's command line names a file under the state directory (the trailing
        # separator keeps /x/run-1 from matching /x/run-10).
        self.processes = {
            name: ManagedProcess(
                name=name,
                pid_file=self.state_dir / "run" / f"{name}.pid",
                log_file=self.state_dir / "logs" / f"{name}.log",
                marker=f"{self.state_dir}{os.sep}",
            )
            for name in (*COMPONENTS, SECRET_CHECK)
        }
        self.timings: dict[str, float] = {}
        self._launched: dict[str, tuple[list[str | Path], dict[str, str]]] = {}

    # -- paths and clients -------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin (system:masters) kubeconfig."""
        return self.state_dir / "kubeconfig"

    @property
    def ca(self) -> CertKey:
        """The cluster's CA with its key: what it signs, every client of the cluster trusts."""
        return CertKey(self.state_dir / "pki" / "ca.crt", self.state_dir / "pki" / "ca.key")

    @property
    def ports(self) -> Ports:
        return Ports(**json.loads((self.state_dir / "cluster.json").read_text())["ports"])

    @property
    def bin_dir(self) -> Path:
        """The binaries this cluster runs (given, or those it was last started with)."""
        if self._bin_dir is not None:
            return self._bin_dir
        return Path(json.loads((self.state_dir / "cluster.json").read_text())["bin_dir"])

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def log_file(self, component: str) -> Path:
        return self.processes[component].log_file

    def kubectl(self) -> Kubectl:
        """kubectl bound to this cluster's admin kubeconfig."""
        return Kubectl(self.kubeconfig, cache_dir=self.state_dir / "kubectl-cache")

    # -- lifecycle --------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """All components alive (by pid) and the API server answering /readyz."""
        if not (self.state_dir / "cluster.json").is_file():
            return False
        if not all(proc.is_running() for proc in self.processes.values()):
            return False
        return self._api_status("/readyz") == 200

    def start(self, timeout: float = 120.0) -> Cluster:
        """Start a fresh cluster (stopping and wiping any previous one in `state_dir`).

        Returns once the API server is ready, the controller manager and the
        scheduler are healthy, every simulated node is Ready without not-ready
        taints, and the `default` ServiceAccount exists (pods can be created).
        """
        bin_dir = self._bin_dir or ensure_binaries()
        try:
            return self._start_all(bin_dir, timeout)
        except ClusterError as error:
            # A port chosen free can be taken before the component binds it (another cluster
            # starting at the same moment); a second try picks new ones.
            if "address already in use" not in str(error):
                raise
            log.warning("a port was taken while starting; starting again with new ports")
            return self._start_all(bin_dir, timeout)

    def _start_all(self, bin_dir: Path, timeout: float) -> Cluster:
        started = time.monotonic()
        self.stop()
        for name in _OWNED:
            path = self.state_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)

        ports = Ports(*free_ports(6))
        (self.state_dir / "cluster.json").write_text(
            json.dumps({"ports": asdict(ports), "bin_dir": str(bin_dir)}, indent=2) + "\n"
        )
        pki = create_pki(self.state_dir / "pki", KUBERNETES_SERVICE_IP)
        server = f"https://127.0.0.1:{ports.apiserver}"
        kubeconfigs = self.state_dir / "kubeconfigs"
        kubeconfigs.mkdir()
        write_kubeconfig(self.kubeconfig, server, pki.ca.cert, pki.admin, "kubeforge-e2e")
        kcm_config = kubeconfigs / "controller-manager.kubeconfig"
        write_kubeconfig(kcm_config, server, pki.ca.cert, pki.controller_manager, "kube-controller-manager")
        scheduler_config = kubeconfigs / "scheduler.kubeconfig"
        write_kubeconfig(scheduler_config, server, pki.ca.cert, pki.scheduler, "kube-scheduler")
        self._mark("prepare", started)

        deadline = started + timeout
        try:
            self._start("etcd", bin_dir, self._etcd_args(ports))
            # Checked first so that an etcd that cannot start (say, a port taken meanwhile) is
            # reported with etcd's log rather than as an API server that never gets ready.
            self._wait(
                "etcd", lambda: http_status(f"http://127.0.0.1:{ports.etcd_client}/health") == 200, deadline
            )
            self._mark("etcd ready", started)
            self._start("kube-apiserver", bin_dir, self._apiserver_args(ports, pki))
            self._wait("kube-apiserver", lambda: self._api_status("/readyz") == 200, deadline)
            self._mark("apiserver ready", started)
            # Not earlier: with delegated authentication they read a kube-system ConfigMap at start
            # and exit if RBAC's bootstrap policy (part of /readyz) is not there yet.
            self._start(
                "kube-controller-manager", bin_dir, self._controller_manager_args(ports, pki, kcm_config)
            )
            self._start("kube-scheduler", bin_dir, self._scheduler_args(ports, scheduler_config))
            # kwok gives up after ~30 s of failed node lists, so it starts once the API is up.
            self._start(
                "kwok", bin_dir, self._kwok_args(ports), env={"KWOK_WORKDIR": str(self.state_dir / "kwok")}
            )
            argv: list[str | Path] = [sys.executable, "-m", "e2e.secretrefs", "--kubeconfig", self.kubeconfig]
            environ = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            self._launched[SECRET_CHECK] = (argv, environ)
            self.processes[SECRET_CHECK].start(argv, env=environ)
            self._create_nodes(self.nodes)
            self._wait("kwok", lambda: self._nodes_ready([n.name for n in self.nodes]), deadline)
            self._mark("nodes ready", started)
            self._wait(
                "kube-controller-manager", lambda: component_health(ports.controller_manager) == 200, deadline
            )
            self._wait("kube-scheduler", lambda: component_health(ports.scheduler) == 200, deadline)
            self._wait(
                "kube-controller-manager",
                lambda: self._api_status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
                deadline,
            )
            self._mark("ready", started)
        except BaseException:
            self.stop()
            raise
        log.info(
            "cluster in %s ready in %.1fs (%s)", self.state_dir, time.monotonic() - started, self.timings
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every component (in parallel; SIGKILL after `timeout`) and remove the pid files."""
        stop_all(reversed(list(self.processes.values())), timeout)

    def add_nodes(self, nodes: Sequence[SimulatedNode], timeout: float = 30.0) -> None:
        """Create more simulated nodes on a running cluster and wait until they are Ready."""
        self._create_nodes(nodes)
        self.nodes += nodes
        self._wait("kwok", lambda: self._nodes_ready([n.name for n in nodes]), time.monotonic() + timeout)

    # -- component command lines ------------------------------------------------------------------

    def _etcd_args(self, ports: Ports) -> list[str]:
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        client = f"http://127.0.0.1:{ports.etcd_client}"
        return [
            "--name=kubeforge",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kubeforge={peer}",
            "--initial-cluster-state=new",
            # A throw-away cluster: durability is not worth an fsync per write on a slow disk.
            "--unsafe-no-fsync",
            "--auto-compaction-retention=1",
            "--quota-backend-bytes=8589934592",
            "--log-level=warn",
            *self.extra_args.get("etcd", []),
        ]

    def _apiserver_args(self, ports: Ports, pki: ClusterPKI) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--advertise-address=127.0.0.1",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={self.state_dir / 'pki'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            # The `kubernetes` Service cannot point at a loopback address (Endpoints validation
            # rejects 127.0.0.0/8), and nothing in-cluster needs it: no pod really runs.
            "--endpoint-reconciler-type=none",
            # The aggregation layer (kubeadm's defaults), also read by the components'
            # delegated authentication.
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            # Aggregated API servers (the metrics adapters of e2e/monitoring.py) run on loopback and
            # no kube-proxy gives a ClusterIP a meaning here: the API server dials the address in
            # the APIService's Service's EndpointSlice instead (e2e/README.md, "Aggregated APIs").
            "--enable-aggregator-routing=true",
            *self.extra_args.get("kube-apiserver", []),
        ]

    def _controller_manager_args(self, ports: Ports, pki: ClusterPKI, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            # Every default controller: deployment, replicaset, job, horizontalpodautoscaling,
            # garbage-collector, namespace, serviceaccount(-token), endpointslice, disruption,
            # ttl-after-finished, podgc, node-lifecycle, ...
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--cluster-name=kubeforge-e2e",
            # One instance per cluster: no lease to win (which also means no 15 s wait after a restart).
            "--leader-elect=false",
            # The default client rate limit (20 qps) would make the controllers, not the operator,
            # the bottleneck of a benchmark with a thousand Deployments.
            "--kube-api-qps=500",
            "--kube-api-burst=1000",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            *self.extra_args.get("kube-controller-manager", []),
        ]

    def _scheduler_args(self, ports: Ports, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            "--leader-elect=false",
            "--kube-api-qps=500",
            "--kube-api-burst=1000",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            *self.extra_args.get("kube-scheduler", []),
        ]

    def _kwok_args(self, ports: Ports) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={KWOK_DIR / 'kwok.yaml'}",
            f"--config={KWOK_DIR / 'stages' / 'node.yaml'}",
            f"--config={KWOK_DIR / 'stages' / 'pod.yaml'}",
            f"--server-address=127.0.0.1:{ports.kwok}",
            *self.extra_args.get("kwok", []),
        ]

    # -- helpers ----------------------------------------------------------------------------------

    def _start(self, name: str, bin_dir: Path, args: list[str], env: Mapping[str, str] | None = None) -> None:
        argv: list[str | Path] = [bin_dir / name, *args]
        environ = {**os.environ, **(env or {})}
        self._launched[name] = (argv, environ)
        self.processes[name].start(argv, env=environ)

    def restart(self, component: str, timeout: float = 60.0) -> float:
        """Stop one component (SIGTERM, SIGKILL after 10 s) and start it again with the same command
        line, as a crash and a supervisor's restart would; returns the seconds until it was healthy
        again. For the fault-injection tests: the API server and etcd keep their data and ports."""
        started = time.monotonic()
        argv, environ = self._launched[component]
        self.processes[component].stop()
        self.processes[component].start(argv, env=environ)
        ports = self.ports
        ready: dict[str, Callable[[], bool]] = {
            "etcd": lambda: http_status(f"http://127.0.0.1:{ports.etcd_client}/health") == 200,
            "kube-apiserver": lambda: self._api_status("/readyz") == 200,
        }
        self._wait(component, ready.get(component, lambda: True), time.monotonic() + timeout)
        if component == "etcd":  # the API server reconnects by itself
            self._wait("kube-apiserver", ready["kube-apiserver"], time.monotonic() + timeout)
        return time.monotonic() - started

    def _wait(self, component: str, ready: Callable[[], bool], deadline: float) -> None:
        """Poll `ready` until it holds; fail early with the log of any component that exited."""
        while not ready():
            for proc in self.processes.values():
                code = proc.exit_code()
                if code is not None:
                    raise ClusterError(
                        f"{proc.name} exited with status {code} while waiting for {component}; "
                        f"end of {proc.log_file}:\n{proc.log_tail()}"
                    )
            if time.monotonic() > deadline:
                proc = self.processes[component]
                raise ClusterError(
                    f"timed out waiting for {component}; end of {proc.log_file}:\n{proc.log_tail()}"
                )
            time.sleep(0.1)

    def _mark(self, phase: str, started: float) -> None:
        self.timings[phase] = round(time.monotonic() - started, 2)

    def _ssl_context(self) -> ssl.SSLContext:
        pki_dir = self.state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return context

    def _api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to the API server as admin; (status, parsed body). Status 0: no connection."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.server + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._ssl_context()) as response:
                return response.status, _parse(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _parse(error.read())
        except (OSError, ssl.SSLError):
            return 0, None

    def _api_status(self, path: str) -> int:
        return self._api("GET", path)[0]

    def _create_nodes(self, nodes: Sequence[SimulatedNode]) -> None:
        for node in nodes:
            status, body = self._api("POST", "/api/v1/nodes", node.manifest())
            if status not in (201, 409):
                raise ClusterError(f"creating node {node.name}: HTTP {status}: {body}")

    def _nodes_ready(self, names: Sequence[str]) -> bool:
        """All named nodes Ready, and the node lifecycle controller has lifted its not-ready taints."""
        status, body = self._api("GET", "/api/v1/nodes")
        if status != 200:
            return False
        ready = set()
        for node in body["items"]:
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            taints = node.get("spec", {}).get("taints") or []
            if conditions.get("Ready") == "True" and not any(
                t["key"].startswith("node.kubernetes.io/") for t in taints
            ):
                ready.add(node["metadata"]["name"])
        return set(names) <= ready


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@contextmanager
def own_cluster(
    prefix: str, failures: Callable[[], int], extra_args: Mapping[str, Sequence[str]] | None = None
) -> Iterator[Cluster]:
    """A cluster of a test module's own (beside the session's, whose operator would reconcile the same
    objects), under .e2e/<prefix>*: cleaned like the session's when abandoned, its logs kept when
    `failures()` (the session's failed-test count) grew meanwhile."""
    root = REPO_ROOT / ".e2e"
    root.mkdir(exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    (state_dir / "owner.pid").write_text(f"{os.getpid()}\n")
    cluster = Cluster(state_dir, bin_dir=ensure_binaries(), extra_args=extra_args)
    failed_before = failures()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if failures() > failed_before:
            shutil.rmtree(state_dir / "etcd", ignore_errors=True)
            print(f"\ne2e cluster logs kept in {state_dir / 'logs'}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
