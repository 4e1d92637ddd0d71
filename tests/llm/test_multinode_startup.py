"""A multi-node replica's startup with the real Ray that vLLM brings (the tool environment of
tests/llm/vllm-env.sh): the worker script joins the leader's Ray head, and the leader script starts
tritonserver only once the group's GPUs are all in the Ray cluster.

Both scripts run as builders/leaderworkerset.py renders them, on this machine: two Ray nodes on
loopback, each declaring 8 GPUs (`--num-gpus`, as Ray's GPU detection would report on a GPU node),
and a stand-in tritonserver that records how it was started and what the Ray cluster held then.
A shim around `ray` adds only what sharing one machine needs (free ports, the temporary directory,
the GPU count); the scripts' own arguments reach Ray unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.net import free_ports
from kubeforge.builders.leaderworkerset import LEADER_SCRIPT, RAY_PORT, WORKER_SCRIPT

HERE = Path(__file__).resolve().parent
ENV_SCRIPT = HERE / "vllm-env.sh"
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 150
GPUS_PER_NODE = 8

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + START_TIMEOUT_S)

GPU_COUNT = (
    "import ray; ray.init(address='auto', logging_level='ERROR'); "
    "print(int(ray.cluster_resources().get('GPU', 0)))"
)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    result = subprocess.run(
        ["bash", str(ENV_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True, timeout=INSTALL_TIMEOUT_S
    )
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: Ray's unix sockets live under it (a socket path has at most 107 characters)
    path = Path(tempfile.mkdtemp(prefix="kf-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _shims(workdir: Path, python: Path) -> dict[str, str]:
    head_port, client_port, agent_head, agent_worker = free_ports(4)
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    ray = python.parent / "ray"
    common = f"--num-gpus={GPUS_PER_NODE} --num-cpus=1"
    (bin_dir / "ray").write_text(
        f"""#!/bin/sh
# the scripts' fixed Ray port becomes a free one; a second node on this machine needs its own ports
args=""
for a in "$@"; do
  case "$a" in
    --port={RAY_PORT}) a="--port={head_port}" ;;
    --address=*:{RAY_PORT}) a="--address=127.0.0.1:{head_port}" ;;
  esac
  args="$args $a"
done
case " $* " in
  *" --head "*) extra="{common} --temp-dir={workdir}/ray --ray-client-server-port={client_port} --dashboard-agent-listen-port={agent_head}" ;;
  *) extra="{common} --dashboard-agent-listen-port={agent_worker}" ;;
esac
exec {ray} $args $extra
"""
    )
    (bin_dir / "tritonserver").write_text(
        f"""#!/bin/sh
echo "$@" > {workdir}/triton-args
python3 -c "{GPU_COUNT}" > {workdir}/gpus-at-start
"""
    )
    # a wrapper, not a link: a venv's python finds its packages from the path it was started by
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {python} "$@"\n')
    for shim in ("ray", "tritonserver", "python3"):
        (bin_dir / shim).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RAY_TMPDIR": str(workdir / "ray"),
        "POD_IP": "127.0.0.1",
        "LWS_LEADER_ADDRESS": "llama-405b-lws-0.llama-405b-lws.default",
        "KUBEFORGE_ENGINE_GPUS": str(2 * GPUS_PER_NODE),
        "KUBEFORGE_ENGINE_WAIT_SECONDS": "90",
        "HOME": os.environ.get("HOME", "/root"),
        "RAY_CLIENT_PORT": str(client_port),
    }


def _runs_client_server(proc: Path, session: int) -> bool:
    """Whether /proc/<pid> is a Ray client server of the session (the leader's: Ray's daemons stay in it)."""
    try:
        in_session = int((proc / "stat").read_text().rpartition(")")[2].split()[3]) == session
        return in_session and b"ray.util.client.server" in (proc / "cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False


def _start(script: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # a session of its own: Ray's daemons stay in the script's process group, killed with it
        return subprocess.Popen(
            ["/bin/sh", "-c", script, *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes ignore a polite request for a while
    proc.wait(timeout=30)


def test_the_leader_starts_triton_once_the_workers_gpus_have_joined(vllm_python: Path, workdir: Path) -> None:
    env = _shims(workdir, vllm_python)
    # the worker first, as LWS may start it: it retries until the head answers
    worker = _start(WORKER_SCRIPT, [], env, workdir / "worker.log")
    leader = None
    try:
        leader = _start(
            LEADER_SCRIPT,
            ["tritonserver", "--model-repository=/models", "--http-port=8000"],
            env,
            workdir / "leader.log",
        )
        code = leader.wait(timeout=START_TIMEOUT_S)
        log = (workdir / "leader.log").read_text(errors="replace")
        assert code == 0, log[-3000:]
        assert (workdir / "triton-args").read_text().split() == [
            "--model-repository=/models",
            "--http-port=8000",
        ]
        # tritonserver (and so vLLM's engine) started with both nodes' GPUs in the Ray cluster
        assert int((workdir / "gpus-at-start").read_text()) == 2 * GPUS_PER_NODE
        # Ray's client server was started by `ray start --head` and stopped by the script: nothing
        # answers on its port, and no such process is left
        with (
            pytest.raises(OSError),
            socket.create_connection(("127.0.0.1", int(env["RAY_CLIENT_PORT"])), timeout=2),
        ):
            pass
        assert not [p for p in Path("/proc").glob("[0-9]*") if _runs_client_server(p, leader.pid)]
        assert worker.poll() is None, (workdir / "worker.log").read_text(errors="replace")[-3000:]  # --block
    finally:
        if leader is not None:
            _kill_group(leader)
        _kill_group(worker)
