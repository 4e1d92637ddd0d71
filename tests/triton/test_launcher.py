"""The local tritonserver launcher: finding the wheel's server, and turning container specs into local runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kubeforge.testing.triton import (
    TritonInstall,
    TritonStartError,
    find_tritonserver,
    flag_value,
    run_tritonserver,
    tritonserver_args,
)
from kubeforge.testing.triton_pod import localize_container_command

FAKE_INSTALL = TritonInstall(
    binary=Path("/w/bin/tritonserver"),
    lib_dir=Path("/w/libs"),
    backend_dir=Path("/cache/backends"),
    cache_dir=Path("/w/caches"),
    python_bin_dir=Path("/venv/bin"),
    python_paths=("/venv/site-packages", "/src"),
)


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (
            ["tritonserver"],
            ["--model-repository=/models", "--http-port=8000", "--grpc-port", "8001", "--metrics-port=8002"],
            [
                "--model-repository=/tmp/repo",
                "--http-port=18000",
                "--grpc-port",
                "18001",
                "--metrics-port=18002",
            ],
        ),
        (  # Kubernetes runs args alone when command is unset; the binary may be a full path
            None,
            [
                "/opt/tritonserver/bin/tritonserver",
                "--model-repository",
                "/models/sub",
                "--strict-readiness=true",
            ],
            ["--model-repository", "/tmp/repo/sub", "--strict-readiness=true"],
        ),
        (  # addresses go to loopback; unknown ports and other paths stay; /modelsX is not under /models
            ["tritonserver", "--http-address=0.0.0.0", "--grpc-address", "0.0.0.0", "--http-port=9999"],
            ["--backend-directory=/opt/tritonserver/backends", "--log-file=/modelsX/log"],
            [
                "--http-address=127.0.0.1",
                "--grpc-address",
                "127.0.0.1",
                "--http-port=9999",
                "--backend-directory=/local/backends",
                "--log-file=/modelsX/log",
            ],
        ),
        (["tritonserver", "--disable-auto-complete-config"], [], ["--disable-auto-complete-config"]),
    ],
)
def test_localize_container_command(command: list[str] | None, args: list[str], expected: list[str]) -> None:
    paths = {"/models": "/tmp/repo", "/opt/tritonserver/backends": Path("/local/backends")}
    ports = {8000: 18000, 8001: 18001, 8002: 18002}
    assert localize_container_command(command, args, paths=paths, ports=ports) == expected


def test_localize_refuses_other_programs() -> None:
    with pytest.raises(ValueError, match="not a tritonserver command line"):
        localize_container_command(["/bin/sh", "-c", "tritonserver"], [])


def test_flag_value() -> None:
    args = ["--http-port=1", "--grpc-port", "2", "--http-port=3", "--metrics-port"]
    assert flag_value(args, "--http-port") == "3"
    assert flag_value(args, "--grpc-port") == "2"
    assert flag_value(args, "--metrics-port") is None  # no value follows
    assert flag_value(args, "--http") is None


def test_tritonserver_args_add_only_what_is_missing() -> None:
    args = tritonserver_args(
        ["--http-port=1234", "--grpc-address=0.0.0.0"], FAKE_INSTALL, repository=Path("/r")
    )
    assert args[:3] == ["--http-port=1234", "--grpc-address=0.0.0.0", "--model-repository=/r"]
    assert flag_value(args, "--backend-directory") == "/cache/backends"
    assert flag_value(args, "--cache-directory") == "/w/caches"
    assert flag_value(args, "--grpc-address") == "0.0.0.0"  # kept: the caller said so
    assert flag_value(args, "--http-address") == flag_value(args, "--metrics-address") == "127.0.0.1"
    ports = {flag_value(args, f) for f in ("--http-port", "--grpc-port", "--metrics-port")}
    assert len(ports) == 3 and "1234" in ports


def test_environment_prepends_libraries_python_and_paths() -> None:
    env = FAKE_INSTALL.environment({"PATH": "/usr/bin", "PYTHONPATH": "/src:/x", "KEEP": "1"})
    assert env["LD_LIBRARY_PATH"] == "/w/libs"
    assert env["PATH"] == f"/venv/bin{os.pathsep}/usr/bin"
    assert env["PYTHONPATH"] == os.pathsep.join(["/venv/site-packages", "/src", "/x"])
    assert env["KEEP"] == "1"


def test_find_tritonserver_prepares_the_backend_directory_once(
    triton_install: TritonInstall, tmp_path: Path
) -> None:
    install = find_tritonserver(cache_root=tmp_path)
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    assert (install.backend_dir / "python" / "libtriton_python.so").is_file()
    assert os.access(stub, os.X_OK)
    assert install.backend_dir.is_relative_to(tmp_path / "triton-backends")
    mtime = stub.stat().st_mtime_ns
    assert find_tritonserver(cache_root=tmp_path) == install  # a second call reuses the copy
    assert stub.stat().st_mtime_ns == mtime
    assert install.python_bin_dir == Path(sys.executable).parent
    assert not any("lib-dynload" in p for p in install.python_paths)  # the stub brings its own stdlib
    assert any((Path(p) / "numpy").is_dir() for p in install.python_paths)  # ... but not our packages


@pytest.mark.triton
def test_a_server_that_exits_reports_its_log(triton_install: TritonInstall, tmp_path: Path) -> None:
    with (
        pytest.raises(TritonStartError, match="exited with code") as failure,
        run_tritonserver(["--model-control-mode=bogus"], repository=tmp_path, install=triton_install),
    ):
        pass
    assert "invalid argument for --model-control-mode" in failure.value.log
