"""Run the operator's Triton pod spec locally: its init container and its tritonserver container.

The Deployment builder's containers name container paths (`/models`, `/mnt/pvc/<claim>`) and
ports (8000-8002); these helpers run the same command lines with those rewritten to local folders
and free loopback ports, so a test proves the builder, the repository program and Triton agree.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubeforge.builders.modeldeployment import RESTRICT_SCRIPT, RESTRICTED_APIS_ENV, restricted_api_flags
from kubeforge.testing.triton import (
    ADDRESS_FLAGS,
    DEFAULT_PORTS,
    LOOPBACK,
    PORT_FLAGS,
    TritonInstall,
    TritonServer,
    find_tritonserver,
    flag_value,
    free_port,
    run_tritonserver,
    with_defaults,
)

log = logging.getLogger(__name__)

# Where the Triton image keeps its backends and caches (tritonserver's defaults).
CONTAINER_BACKEND_DIR = "/opt/tritonserver/backends"
CONTAINER_CACHE_DIR = "/opt/tritonserver/caches"


def _rewrite_path(value: str, paths: Mapping[str, str]) -> str:
    # longest prefix first, so /models/extra wins over /models
    for prefix in sorted(paths, key=len, reverse=True):
        if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
            return str(paths[prefix]) + value[len(prefix.rstrip("/")) :]
    return value


def _rewrite_value(
    flag: str | None, value: str, paths: Mapping[str, str], ports: Mapping[int, int], host: str
) -> str:
    if flag in ADDRESS_FLAGS:
        return host
    if flag is not None and flag.endswith("-port") and value.isdigit():
        return str(ports.get(int(value), int(value)))
    return _rewrite_path(value, paths)


def localize_container_command(
    command: Sequence[str] | None,
    args: Sequence[str] | None = None,
    *,
    paths: Mapping[str, str | os.PathLike[str]] | None = None,
    ports: Mapping[int, int] | None = None,
    host: str = LOOPBACK,
) -> list[str]:
    """A container's tritonserver command line as local tritonserver arguments (without the binary).

    `command`/`args` are the container's (Kubernetes runs `args` alone when `command` is unset).
    Path values under a key of `paths` move to its value (`/models` -> a temporary folder),
    `--*-port` values found in `ports` are renumbered, and `--*-address` values become `host`.
    """
    argv = [*(command or ()), *(args or ())]
    if not argv or Path(argv[0]).name != "tritonserver":
        raise ValueError(f"not a tritonserver command line: {argv!r}")
    path_map = {k: os.fspath(v) for k, v in (paths or {}).items()}
    out: list[str] = []
    pending: str | None = None  # a flag whose value is the next argument
    for arg in argv[1:]:
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            out.append(f"{flag}={_rewrite_value(flag, value, path_map, ports or {}, host)}")
            pending = None
        elif arg.startswith("--"):
            out.append(arg)
            pending = arg
        else:
            out.append(_rewrite_value(pending, arg, path_map, ports or {}, host))
            pending = None
    return out


def _unwrap_restriction(container: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(command, arguments it adds): the builder's RESTRICT_SCRIPT wrapper does here what its shell
    does in the container (a fresh token, the restricted-API flags after the container's args)."""
    command = list(container.get("command") or ())
    if command[:3] != ["/bin/sh", "-c", RESTRICT_SCRIPT]:
        return command, []
    env = {e["name"]: e.get("value", "") for e in container.get("env") or ()}
    return command[3:], restricted_api_flags(env[RESTRICTED_APIS_ENV], uuid.uuid4().hex)


def _container_env(container: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, str]:
    env = {}
    for entry in container.get("env") or ():
        if "value" in entry:
            env[entry["name"]] = _rewrite_path(str(entry["value"]), paths)
        else:
            log.warning(
                "env %s comes from a valueFrom source, which a local run cannot resolve", entry["name"]
            )
    return env


def _rewrite_arg(arg: str, paths: Mapping[str, str]) -> str:
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return f"{flag}={_rewrite_path(value, paths)}"
    return _rewrite_path(arg, paths)


def run_init_container(
    container: Mapping[str, Any],
    *,
    paths: Mapping[str, str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run the model-repository init container spec (`kubeforge assemble-repository ...`) with this Python.

    Its paths (`/models`, `/mnt/pvc/<claim>`) move as `paths` says; its env is kept (valueFrom
    entries, which need the API server, are left out: pass them in `env`). Returns the finished
    process with its output; the caller checks the exit code.
    """
    argv = [*(container.get("command") or ()), *(container.get("args") or ())]
    if not argv or Path(argv[0]).name != "kubeforge":
        raise ValueError(f"not a kubeforge command line: {argv!r}")
    path_map = {k: os.fspath(v) for k, v in paths.items()}
    local = [sys.executable, "-m", "kubeforge", *(_rewrite_arg(a, path_map) for a in argv[1:])]
    full_env = dict(os.environ) | _container_env(container, path_map) | dict(env or {})
    return subprocess.run(local, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def run_triton_container(
    container: Mapping[str, Any],
    *,
    paths: Mapping[str, str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    install: TritonInstall | None = None,
    pod_ip: str | None = None,
    **kwargs: Any,
) -> Iterator[TritonServer]:
    """Run a Kubernetes container spec (as the Deployment builder produces it) as a local tritonserver.

    `paths` maps container paths to local ones (e.g. `{"/models": repo}`); the Triton image's
    backend and cache folders map to the local install's. Every port the container declares, or
    sets with a `--*-port` flag, and Triton's defaults 8000-8002, get free loopback ports:
    `server.port_map` says which. With `pod_ip` (an address of this host that stands for the pod,
    e2e/netns.py) it binds there on the container's own ports, as the pod would. Other keyword
    arguments go to `run_tritonserver`.
    """
    install = install or find_tritonserver()
    path_map = {
        CONTAINER_BACKEND_DIR: str(install.backend_dir),
        CONTAINER_CACHE_DIR: str(install.cache_dir),
        **{k: os.fspath(v) for k, v in paths.items()},
    }
    command, extra = _unwrap_restriction(container)
    argv = [*command, *(container.get("args") or ()), *extra]
    declared = {int(p["containerPort"]) for p in container.get("ports") or ()} | set(DEFAULT_PORTS.values())
    declared |= {
        int(v) for f in PORT_FLAGS.values() if (v := flag_value(argv, f)) is not None and v.isdigit()
    }
    port_map = {port: port if pod_ip else free_port() for port in sorted(declared)}
    if pod_ip is not None:
        kwargs["host"] = pod_ip
    args = localize_container_command(
        command,
        [*(container.get("args") or ()), *extra],
        paths=path_map,
        ports=port_map,
        host=pod_ip or LOOPBACK,
    )
    # the container's defaults (8000-8002) when it sets no port flag, renumbered like the rest
    args = with_defaults(
        args, {flag: str(port_map[DEFAULT_PORTS[kind]]) for kind, flag in PORT_FLAGS.items()}
    )
    full_env = _container_env(container, path_map) | dict(env or {})
    with run_tritonserver(args, env=full_env, install=install, **kwargs) as server:
        server.port_map = port_map
        server.named_ports = {
            p["name"]: int(p["containerPort"]) for p in container.get("ports") or () if "name" in p
        }
        yield server
