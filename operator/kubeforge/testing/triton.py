"""Run the real `tritonserver` that the nvidia-pytriton wheel ships, on loopback, for tests and benchmarks.

The wheel carries Triton (2.51 in nvidia-pytriton 0.7) with the Python backend and nothing else;
it serves on CPU. What it takes to run it outside PyTriton:

- `LD_LIBRARY_PATH` with the wheel's `nvidia_pytriton.libs/` (the Python backend's stub finds its
  libraries only through a path relative to where the wheel put it, which a copy breaks);
- a backend directory holding `python/libtriton_python.so` with the stub for this Python version
  next to it (`python_backend_stubs/<X.Y>/triton_python_backend_stub`): prepared once under
  `~/.cache/kubeforge/triton-backends/`;
- for a `model.py` to import torch or numpy from this environment: this interpreter's `bin/` first
  on `PATH` (the stub's embedded Python finds its prefix, and so a venv's site-packages, from
  `python3` on `PATH`, which is what PyTriton relies on) and this interpreter's `sys.path` in
  `PYTHONPATH` (so `.pth` additions such as an editable install or a shared torch count too).

`run_tritonserver` starts it on free loopback ports. `kubeforge.testing.triton_pod` runs the
containers of the operator's Triton pod spec on top of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# The flags of the three endpoints and their defaults in tritonserver and in the Triton image.
PORT_FLAGS = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
ADDRESS_FLAGS = ("--http-address", "--grpc-address", "--metrics-address")

Wait = Literal["live", "ready"] | None


class TritonNotFound(RuntimeError):
    """The nvidia-pytriton wheel (and so tritonserver) is not installed in this environment."""


class TritonStartError(RuntimeError):
    """tritonserver exited, or did not answer, before it was up; carries its log."""

    def __init__(self, message: str, log_text: str) -> None:
        tail = "\n".join(log_text.splitlines()[-40:])
        super().__init__(f"{message}\n--- tritonserver log (tail) ---\n{tail}")
        self.log = log_text


# ---------------------------------------------------------------------------------------------
# The installation.


@dataclass(frozen=True)
class TritonInstall:
    """A runnable tritonserver: the binary, its libraries, and a prepared backend directory."""

    binary: Path
    lib_dir: Path
    backend_dir: Path
    cache_dir: Path
    python_bin_dir: Path
    python_paths: tuple[str, ...]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment tritonserver (and the Python backend's stub) needs, over base (default os.environ)."""
        env = dict(os.environ if base is None else base)

        def prepend(name: str, *entries: str) -> None:
            old = [p for p in env.get(name, "").split(os.pathsep) if p]
            env[name] = os.pathsep.join([*entries, *(p for p in old if p not in entries)])

        prepend("LD_LIBRARY_PATH", str(self.lib_dir))
        prepend("PATH", str(self.python_bin_dir))
        prepend("PYTHONPATH", *self.python_paths)
        return env


def _wheel_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound("nvidia-pytriton is not installed: pip install nvidia-pytriton")
    return Path(next(iter(spec.submodule_search_locations)))


def _stub_path(pytriton_dir: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return pytriton_dir / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"


def tritonserver_available() -> bool:
    """Whether `find_tritonserver` can work here (for pytest skip conditions); prepares nothing."""
    try:
        pytriton_dir = _wheel_dir()
    except TritonNotFound:
        return False
    return (pytriton_dir / "tritonserver" / "bin" / "tritonserver").is_file() and _stub_path(
        pytriton_dir
    ).is_file()


def default_cache_root() -> Path:
    """`$KUBEFORGE_CACHE` (set by the Makefile), else ~/.cache/kubeforge."""
    return Path(os.environ.get("KUBEFORGE_CACHE") or Path.home() / ".cache" / "kubeforge")


def _prepare_backends(wheel_backends: Path, stub: Path, target: Path) -> None:
    """Copy the wheel's backends with the stub next to libtriton_python.so, atomically (once)."""
    if (target / ".complete").is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        shutil.copytree(wheel_backends, partial / "backends", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, partial / "backends" / "python" / stub.name)
        (partial / ".complete").touch()
        try:
            partial.rename(target)
        except OSError:
            # another process prepared the same copy first; theirs is as good as ours
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _python_paths() -> tuple[str, ...]:
    """This interpreter's sys.path without its standard library (the stub brings its own)."""
    stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}

    def is_stdlib(entry: str) -> bool:
        real = os.path.realpath(entry)
        if entry.endswith(".zip") or real in stdlib:
            return True
        # lib-dynload is under the standard library; a venv's site-packages is under "platstdlib" too
        parts = Path(real).parts
        site = "site-packages" in parts or "dist-packages" in parts
        return not site and any(real.startswith(s + os.sep) for s in stdlib)

    kept = [p for p in sys.path if p and Path(p).is_dir() and not is_stdlib(p)]
    return tuple(dict.fromkeys(kept))


def find_tritonserver(cache_root: Path | None = None) -> TritonInstall:
    """Locate the wheel's tritonserver and prepare its backend directory (once per wheel and Python).

    Raises TritonNotFound when nvidia-pytriton (or its stub for this Python) is missing.
    """
    pytriton_dir = _wheel_dir()
    server_dir = pytriton_dir / "tritonserver"
    binary, stub = server_dir / "bin" / "tritonserver", _stub_path(pytriton_dir)
    if not binary.is_file() or not stub.is_file():
        raise TritonNotFound(f"{binary} or {stub} is missing: reinstall nvidia-pytriton for this Python")
    stat = binary.stat()
    key = hashlib.sha256(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}:{stub}".encode()).hexdigest()[:12]
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    prepared = (cache_root or default_cache_root()) / "triton-backends" / f"{version}-{key}"
    _prepare_backends(server_dir / "backends", stub, prepared)
    return TritonInstall(
        binary=binary,
        lib_dir=pytriton_dir.parent / "nvidia_pytriton.libs",
        backend_dir=prepared / "backends",
        cache_dir=server_dir / "caches",
        python_bin_dir=Path(sys.executable).parent,
        python_paths=_python_paths(),
    )


# ---------------------------------------------------------------------------------------------
# Arguments.


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Distinct TCP ports free on host right now: all held open at once, so the OS cannot hand out
    one twice (separate free_port calls can: a server then finds two of its ports equal)."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of `--flag=value` or `--flag value` in args (the last one wins, as in tritonserver)."""
    value = None
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and index + 1 < len(args):
            value = args[index + 1]
    return value


def with_defaults(args: Sequence[str], defaults: Mapping[str, str]) -> list[str]:
    """args with `--flag=value` appended for every flag of defaults that args do not set."""
    return [*args, *(f"{flag}={value}" for flag, value in defaults.items() if flag_value(args, flag) is None)]


# ---------------------------------------------------------------------------------------------
# The server.


@dataclass
class TritonServer:
    """A running local tritonserver."""

    process: subprocess.Popen[bytes]
    argv: list[str]
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    # container port -> local port, when started from a container spec (`run_triton_container`)
    port_map: dict[int, int] = field(default_factory=dict)
    named_ports: dict[str, int] = field(default_factory=dict)
    _final_log: str | None = None

    @property
    def http_url(self) -> str:
        """`http://host:port`, for urllib and `kubeforge.triton.client`."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def http_address(self) -> str:
        """`host:port`, which `tritonclient.http` takes (it refuses a scheme)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """`host:port`, which `tritonclient.grpc` takes (gRPC targets have no scheme)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint, `http://host:port/metrics`."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far (kept after it stops)."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def http_get(self, path: str, port: int | None = None, timeout: float = 2.0) -> int | None:
        """The HTTP status of GET path on the server (default: its HTTP port); None when it does not answer."""
        url = f"http://{self.host}:{port or self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def http_post(
        self, path: str, body: bytes = b"{}", headers: Mapping[str, str] | None = None, timeout: float = 5.0
    ) -> int | None:
        """The HTTP status of POST path (a JSON body) on the server's HTTP port; None when it does not answer."""
        request = urllib.request.Request(
            f"{self.http_url}{path}", data=body, method="POST", headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def probe_succeeds(self, probe: Mapping[str, Any]) -> bool:
        """Evaluate a Kubernetes probe (httpGet or tcpSocket) of the container against this server."""
        action = probe.get("httpGet") or probe.get("tcpSocket")
        if action is None:
            raise ValueError(f"only httpGet and tcpSocket probes can be checked: {probe!r}")
        port = action["port"]
        container_port = self.named_ports[port] if isinstance(port, str) else int(port)
        local = self.port_map.get(container_port, container_port)
        if "httpGet" in probe:
            status = self.http_get(action.get("path", "/"), port=local)
            return status is not None and 200 <= status < 400
        with suppress(OSError), socket.create_connection((self.host, local), timeout=2.0):
            return True
        return False

    def wait_until(self, what: Literal["live", "ready"] = "ready", timeout: float = 60.0) -> None:
        """Wait for /v2/health/<what> to answer 200; TritonStartError if the server exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with code {self.process.returncode}", self.log())
            if self.http_get(f"/v2/health/{what}", timeout=1.0) == 200:
                return
            time.sleep(0.1)
        raise TritonStartError(f"tritonserver was not {what} within {timeout:.0f}s", self.log())

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (Triton unloads its models and exits), then SIGKILL after timeout; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "tritonserver (pid %d) ignored SIGTERM for %.0fs; killing it", self.process.pid, timeout
                )
                # its own process group (start_new_session), still led by it as it is not reaped yet:
                # this also ends the Python backend's stub processes
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._final_log = self.log()
        return int(self.process.returncode)


def _port_clash(log_text: str) -> bool:
    return "already in use" in log_text.lower()


def _start(
    install: TritonInstall, args: list[str], env: Mapping[str, str], log_path: Path, host: str
) -> TritonServer:
    argv = [str(install.binary), *args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    ports = {kind: int(flag_value(args, flag) or DEFAULT_PORTS[kind]) for kind, flag in PORT_FLAGS.items()}
    return TritonServer(process, argv, host, ports["http"], ports["grpc"], ports["metrics"], log_path)


def tritonserver_args(
    args: Sequence[str], install: TritonInstall, *, repository: Path | None = None, host: str = LOOPBACK
) -> list[str]:
    """args completed for a local run: the repository, the backend directory, free ports, loopback addresses.

    What args already set is kept; only what they leave out is added.
    """
    args = list(args)
    if repository is not None and flag_value(args, "--model-repository") is None:
        args.append(f"--model-repository={repository}")
    defaults = {"--backend-directory": str(install.backend_dir), "--cache-directory": str(install.cache_dir)}
    flags = list(PORT_FLAGS.values())
    defaults |= {flag: str(port) for flag, port in zip(flags, free_ports(len(flags), host), strict=True)}
    defaults |= dict.fromkeys(ADDRESS_FLAGS, host)
    return with_defaults(args, defaults)


@contextmanager
def run_tritonserver(
    args: Sequence[str] = (),
    *,
    repository: Path | None = None,
    env: Mapping[str, str] | None = None,
    install: TritonInstall | None = None,
    wait: Wait = "live",
    startup_timeout: float = 60.0,
    stop_timeout: float = 15.0,
    log_path: Path | None = None,
    host: str = LOOPBACK,
) -> Iterator[TritonServer]:
    """Start tritonserver with args (plus what `tritonserver_args` adds), wait, yield it, stop it.

    `env` is added over the environment the server needs. `wait` is the health endpoint to wait for
    ("live", "ready") or None. Note that with --model-control-mode none or poll Triton loads its
    models before it opens its endpoints, so "live" already means "loaded or failed".
    """
    install = install or find_tritonserver()
    full_env = install.environment() | dict(env or {})
    with tempfile.TemporaryDirectory(prefix="tritonserver-") as tmp:
        path = log_path or Path(tmp) / "tritonserver.log"
        server = _start_with_retries(args, install, full_env, path, repository, host, wait, startup_timeout)
        failed = True
        try:
            yield server
            failed = False
        finally:
            server.stop(stop_timeout)
            if failed:
                # shown by pytest next to the failure: what the server said is usually the explanation
                tail = "\n".join(server.log().splitlines()[-40:])
                sys.stderr.write(f"--- tritonserver log (tail) ---\n{tail}\n")


def _start_with_retries(
    args: Sequence[str],
    install: TritonInstall,
    env: Mapping[str, str],
    log_path: Path,
    repository: Path | None,
    host: str,
    wait: Wait,
    startup_timeout: float,
    attempts: int = 3,
) -> TritonServer:
    """Start and wait; a free port taken by someone else between our probe and Triton's bind is retried."""
    for attempt in range(1, attempts + 1):
        server = _start(
            install, tritonserver_args(args, install, repository=repository, host=host), env, log_path, host
        )
        try:
            if wait is not None:
                server.wait_until(wait, startup_timeout)
            return server
        except TritonStartError as exc:
            server.stop(1.0)
            if attempt == attempts or not _port_clash(exc.log):
                raise
            log.warning("tritonserver found a port taken; retrying with other ports")
    raise AssertionError("unreachable")
