"""Kubeforge's GPU paths on a real GPU: the trainer under torchrun with NCCL on CUDA, and Triton with
GPU model instances serving what it exported. Run by run.sh (see README.md there); prints one
``PASS``/``FAIL``/``SKIP`` line per check with its figures and keeps ``summary.json`` up to date after
every check, so a run cut short still says how far it got.

On a machine without CUDA it refuses to run unless ``--allow-cpu`` (a dry run: gloo on the CPU and
KIND_CPU instances, the same steps and assertions otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stubenv import libpython_env, stub_install

from kubeforge.api.modeldeployment import (
    DynamicBatching,
    InstanceGroup,
    InstanceGroupKind,
    ModelFormat,
    TritonModelConfig,
)
from kubeforge.testing.triton import TritonServer, free_port, run_tritonserver
from kubeforge.trainer import generation
from kubeforge.trainer.checkpoint import load_checkpoint
from kubeforge.trainer.export import EXPORT_HEADER, tensor_specs
from kubeforge.trainer.llm_export import language_model_config
from kubeforge.trainer.models import MLP
from kubeforge.triton.config import RECOMMENDED_MAX_QUEUE_DELAY_MICROSECONDS, render_config

MLP_NAME = "mlp"
LM_NAME = "opticks"
PROMPT = "Of the Refraction of Light"
MAX_BATCH_SIZE = 64  # the trainer's default --max-batch-size, which the exported config carries
SUBPROCESS_TIMEOUT = 180.0

JOINED = re.compile(
    r"\[rank 0\] INFO kubeforge\.trainer\.distributed: joined process group: rank (\d+)/(\d+), "
    r"local rank (\d+), backend (\S+), device (\S+)"
)
LOSS = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[rank 0\] INFO \S+: step (\d+)/(\d+) loss ([0-9.]+|nan|inf)$",
    re.M,
)
VALIDATION = re.compile(r"\[rank 0\] .*step (\d+)/\d+ validation loss ([0-9.]+) perplexity")
DIGEST = re.compile(r"\[rank 0\] .*parameters at step (\d+): sha256 ([0-9a-f]{64})")
RESUMED = re.compile(r"resuming from (\S+) at step (\d+)")
NCCL_VERSION = re.compile(r"NCCL INFO .*?NCCL version ([0-9.]+\S*)")


class CheckFailed(AssertionError):
    """A check's assertion, with the reason as its message."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# The report.


class Report:
    """The checks' results, printed as they come and kept in summary.json."""

    def __init__(self, out: Path, mode: str, deadline: float) -> None:
        self.path = out / "summary.json"
        self.deadline = deadline
        self.doc: dict[str, Any] = {
            "mode": mode,
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "checks": {},
            "overall": "RUNNING",
        }
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def record(self, name: str, status: str, figures: dict[str, Any], detail: str) -> None:
        self.doc["checks"][name] = {"status": status, "detail": detail, "figures": figures}
        print(f"\n{status}: {name}: {detail}", flush=True)
        for key, value in figures.items():
            print(f"    {key}: {value}", flush=True)
        print(flush=True)
        self.write()

    def passed(self, name: str) -> bool:
        return self.doc["checks"].get(name, {}).get("status") == "PASS"

    def run(self, name: str, func: Callable[[dict[str, Any]], str], needs: tuple[str, ...] = (),
            min_seconds: float = 20.0) -> bool:  # fmt: skip
        """Run one check: PASS with the detail it returns, FAIL with its assertion or exception."""
        figures: dict[str, Any] = {}
        missing = [n for n in needs if not self.passed(n)]
        if missing:
            self.record(name, "SKIP", figures, f"needs {', '.join(missing)}, which did not pass")
            return False
        left = self.deadline - time.monotonic()
        if left < min_seconds:
            self.record(name, "SKIP", figures, f"out of time ({left:.0f} s left of the check's budget)")
            return False
        log(f"--- {name}")
        started = time.monotonic()
        try:
            detail = func(figures)
            status = "PASS"
        except CheckFailed as exc:
            status, detail = "FAIL", str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed check, with its traceback
            traceback.print_exc()
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        figures["check_seconds"] = round(time.monotonic() - started, 1)
        self.record(name, status, figures, detail)
        return status == "PASS"

    def finish(self) -> int:
        statuses = [c["status"] for c in self.doc["checks"].values()]
        failed = [n for n, c in self.doc["checks"].items() if c["status"] != "PASS"]
        self.doc["overall"] = "PASS" if statuses and not failed else "FAIL"
        self.doc["not_passed"] = failed
        self.write()
        print("=" * 72)
        for name, check in self.doc["checks"].items():
            print(f"{check['status']:4}  {name}: {check['detail']}")
        print(f"OVERALL: {self.doc['overall']} ({len(statuses) - len(failed)}/{len(statuses)} passed)")
        return 0 if self.doc["overall"] == "PASS" else 1


# ---------------------------------------------------------------------------------------------
# Running things.


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def joined(self) -> tuple[int, int, int, str, str] | None:
        match = JOINED.search(self.output)
        if match is None:
            return None
        rank, world, local, backend, device = match.groups()
        return int(rank), int(world), int(local), backend, device.rstrip(",")

    def losses(self) -> dict[int, float]:
        return {int(m.group(2)): float(m.group(4)) for m in LOSS.finditer(self.output)}

    def steps_per_second(self) -> float | None:
        """From the timestamps of the first and last logged steps (start-up left out)."""
        points = [
            (int(m.group(2)), dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
            for m in LOSS.finditer(self.output)
        ]
        if len(points) < 2:
            return None
        (first_step, first_time), (last_step, last_time) = points[0], points[-1]
        seconds = (last_time - first_time).total_seconds()
        return round((last_step - first_step) / seconds, 1) if seconds > 0 else None

    def validation(self) -> dict[int, float]:
        return {int(step): float(loss) for step, loss in VALIDATION.findall(self.output)}

    def digest(self) -> str | None:
        found = DIGEST.findall(self.output)
        return found[-1][1] if found else None


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFORGE_")}
    env.update(MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_trainer(args: list[str], log_path: Path, trainer_log: Path, launcher: str = "torch.distributed.run",
                env: dict[str, str] | None = None) -> Run:  # fmt: skip
    """One rank under torchrun (``-m torch.distributed.run``, or the trainer image's entrypoint
    ``-m kubeforge.trainer.launch``, which runs it as a child): world size 1."""
    argv = [
        sys.executable, "-m", launcher,
        "--nproc-per-node", "1",
        "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
        "-m", "kubeforge.trainer", *args,
    ]  # fmt: skip
    log(f"$ {' '.join(argv[1:])}")
    started = time.monotonic()
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env or trainer_env())  # fmt: skip
        try:
            process.wait(SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    seconds = round(time.monotonic() - started, 1)
    output = log_path.read_text(errors="replace")
    with trainer_log.open("a") as combined:
        combined.write(
            f"\n===== {log_path.name} (exit {process.returncode}, {seconds} s): {' '.join(argv)}\n"
        )
        combined.write(output)
    log(f"exit {process.returncode} after {seconds} s ({log_path})")
    return Run(process.returncode, output, seconds)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def read_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CheckFailed(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc


def gpu_evidence(
    pids: list[int], compute_apps: str, libcuda: dict[int, bool]
) -> tuple[bool, str, dict[int, str]]:
    """Whether a stub process is on the GPU, from ``nvidia-smi --query-compute-apps=pid,process_name,
    used_memory --format=csv,noheader,nounits`` output and whether each stub has libcuda mapped."""
    listed: dict[int, str] = {}
    for line in compute_apps.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            listed[int(parts[0])] = f"{parts[1]} {parts[-1]} MiB"
    for pid in pids:
        if pid in listed:
            memory = listed[pid].rsplit(" ", 2)[-2]
            if memory.isdigit() and int(memory) > 0:
                return True, f"stub pid {pid} holds {memory} MiB of GPU memory (nvidia-smi)", listed
            return True, f"stub pid {pid} is a GPU compute process (nvidia-smi; memory {memory})", listed
    stubs = [pid for pid, text in listed.items() if "triton_python_backend_stub" in text]
    if stubs and any(libcuda.values()):
        # listed under other pids (another pid namespace): some stub is on the GPU, and this one loaded CUDA
        return (
            True,
            f"stub pids {stubs} on the GPU per nvidia-smi (not {pids}); this stub has libcuda mapped",
            listed,
        )
    if not listed and any(libcuda.values()):
        # a machine whose nvidia-smi lists no processes at all: the weaker evidence then
        return (
            True,
            "nvidia-smi lists no processes here; the stub has libcuda mapped (GPU branch taken)",
            listed,
        )
    return False, f"compute apps {listed or compute_apps.strip()!r}, libcuda mapped {libcuda}", listed


# ---------------------------------------------------------------------------------------------
# The checks.


class GpuCheck:
    def __init__(self, args: argparse.Namespace, mode: str) -> None:
        self.args = args
        self.gpu = mode == "gpu"
        self.work: Path = args.work
        self.out: Path = args.out
        self.trainer_log = self.out / "trainer.log"
        self.expected_backend = "nccl" if self.gpu else "gloo"
        self.expected_device = "cuda:0" if self.gpu else "cpu"
        self.kind = InstanceGroupKind.GPU if self.gpu else InstanceGroupKind.CPU
        self.mlp_repository = self.work / "mlp-b" / "repository"
        self.lm_repository = self.work / "lm" / "repository"
        self.serve_repository = self.work / "serve"
        self.server: TritonServer | None = None
        self.greedy_40: str | None = None

    # -- 1. the machine ------------------------------------------------------------------------

    def environment(self, fig: dict[str, Any]) -> str:
        probe = (
            "import json, torch\n"
            "d = {'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available()}\n"
            "def get(key, read):\n"
            "    try:\n"
            "        d[key] = read()\n"
            "    except Exception as exc:\n"
            "        d[key] = f'{type(exc).__name__}: {exc}'\n"
            "if d['cuda_available']:\n"
            "    p = torch.cuda.get_device_properties(0)\n"
            "    get('device_count', torch.cuda.device_count)\n"
            "    get('name', lambda: p.name)\n"
            "    get('capability', lambda: f'{p.major}.{p.minor}')\n"
            "    get('total_memory_gib', lambda: round(p.total_memory / 2**30, 1))\n"
            "    get('multiprocessors', lambda: p.multi_processor_count)\n"
            "    get('nccl', lambda: '.'.join(map(str, torch.cuda.nccl.version())))\n"
            "    get('cudnn', torch.backends.cudnn.version)\n"
            "    get('matmul_allow_tf32', lambda: torch.backends.cuda.matmul.allow_tf32)\n"
            "    a = torch.randn(1024, 1024, device='cuda')\n"
            "    c = (a @ a).cpu()\n"
            "    d['matmul_max_abs_diff_vs_cpu'] = float((c - a.cpu() @ a.cpu()).abs().max())\n"
            "print(json.dumps(d, default=str))\n"
        )
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        require(result.returncode == 0, f"torch probe failed: {tail(result.stderr)}")
        info = json.loads(result.stdout.strip().splitlines()[-1])
        fig.update(info)
        fig["python"] = sys.version.split()[0]
        fig["executable"] = sys.executable
        smi = shutil.which("nvidia-smi")
        if smi:
            query = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total,memory.used", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            fig["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
        else:
            fig["nvidia_smi"] = "not installed"
        if self.gpu:
            require(info["cuda_available"] and info.get("matmul_max_abs_diff_vs_cpu", 1) < 0.1,
                    "CUDA is not usable from torch")  # fmt: skip
            return f"{info['name']} (sm {info['capability']}), torch {info['torch']} CUDA {info['torch_cuda']}, NCCL {info['nccl']}"
        return f"CPU dry run: torch {info['torch']}, CUDA available: {info['cuda_available']}"

    # -- 2. the trainer --------------------------------------------------------------------------

    def _check_joined(self, run: Run, what: str) -> None:
        joined = run.joined()
        require(joined is not None, f"{what}: no 'joined process group' line\n{tail(run.output)}")
        assert joined is not None
        rank, world, local, backend, device = joined
        require(
            (rank, world, local) == (0, 1, 0),
            f"{what}: joined as rank {rank}/{world} local {local}, expected 0/1 local 0",
        )
        require(
            backend == self.expected_backend and device == self.expected_device,
            f"{what}: backend {backend} on {device}, expected {self.expected_backend} on {self.expected_device}",
        )

    def train_mlp(self, fig: dict[str, Any]) -> str:
        a_steps, b_steps = self.args.mlp_steps, self.args.mlp_steps + self.args.mlp_steps // 2
        every = max(self.args.mlp_steps // 2, 1)
        common = [
            "--model", "kubeforge.trainer.models:MLP",
            "--batch-size", "64",
            "--dataset-size", "8192",
            "--lr", "0.05",
            "--seed", "7",
            "--checkpoint-every", str(every),
            "--keep-last", "3",
            "--log-every", "10",
        ]  # fmt: skip
        checkpoints = self.work / "mlp-b" / "checkpoints"
        # run A: train the first part, checkpoint, export (NCCL's own log on: its init is evidence too)
        run_a = run_trainer(
            [*common, "--steps", str(a_steps), "--checkpoint-dir", str(checkpoints),
             "--output-uri", str(self.work / "mlp-a" / "repository"), "--model-name", MLP_NAME,
             "--export-format", "python"],
            self.work / "train-mlp-a.log", self.trainer_log, env=trainer_env(NCCL_DEBUG="INFO"),
        )  # fmt: skip
        fig["run_a_seconds"] = run_a.seconds
        require(run_a.returncode == 0, f"run A exited {run_a.returncode}\n{tail(run_a.output)}")
        self._check_joined(run_a, "run A")
        fig["backend"], fig["device"], fig["world_size"] = self.expected_backend, self.expected_device, 1
        if self.gpu:
            # NCCL_DEBUG=INFO: the communicator's own log (evidence beside the backend's name, not asserted)
            nccl = NCCL_VERSION.search(run_a.output)
            fig["nccl_log_version"] = nccl.group(1) if nccl else None
            fig["nccl_info_lines"] = run_a.output.count("NCCL INFO")
        losses = run_a.losses()
        require(sorted(losses) == list(range(10, a_steps + 1, 10)), f"run A logged steps {sorted(losses)}")
        first, last = losses[10], losses[a_steps]
        fig["loss_first_step10"], fig["loss_last"] = first, last
        fig["steps_per_s_run_a"] = run_a.steps_per_second()
        require(last < 0.5 * first, f"run A: loss {first} -> {last} did not halve")
        saved = sorted(p.name for p in checkpoints.glob("ckpt-*.pt"))
        require(
            f"ckpt-{a_steps:08d}.pt" in saved, f"no checkpoint of step {a_steps} in {checkpoints}: {saved}"
        )
        progress = read_json(checkpoints / "progress.json")
        require(
            progress["state"] == "succeeded" and progress["step"] == a_steps, f"run A progress {progress}"
        )

        # run B: the same job asked for more steps resumes from A's last checkpoint (CUDA RNG state and all)
        run_b = run_trainer(
            [*common, "--steps", str(b_steps), "--checkpoint-dir", str(checkpoints),
             "--output-uri", str(self.mlp_repository), "--model-name", MLP_NAME, "--export-format", "python"],
            self.work / "train-mlp-b.log", self.trainer_log,
        )  # fmt: skip
        fig["run_b_seconds"] = run_b.seconds
        require(run_b.returncode == 0, f"run B exited {run_b.returncode}\n{tail(run_b.output)}")
        self._check_joined(run_b, "run B")
        resumed = RESUMED.search(run_b.output)
        require(
            resumed is not None and int(resumed.group(2)) == a_steps,
            f"run B did not resume at step {a_steps}\n{tail(run_b.output)}",
        )
        b_losses = run_b.losses()
        require(
            sorted(b_losses) == list(range(a_steps + 10, b_steps + 1, 10)),
            f"run B trained steps {sorted(b_losses)}, expected {a_steps + 10}..{b_steps}",
        )
        fig["resumed_at_step"] = a_steps
        fig["loss_after_resume_last"] = b_losses[b_steps]
        fig["steps_per_s_run_b"] = run_b.steps_per_second()
        progress = read_json(checkpoints / "progress.json")
        require(
            progress["state"] == "succeeded" and progress["step"] == b_steps and progress["output"],
            f"run B progress {progress}",
        )
        model_dir = self.mlp_repository / MLP_NAME
        files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
        require(files == ["1/model.pt", "1/model.py", "config.pbtxt"], f"export of run B: {files}")
        fig["digest_resumed"] = run_b.digest()
        return (
            f"backend {self.expected_backend} on {self.expected_device} (world size 1: one GPU, and NCCL "
            f"puts one rank per GPU); loss {first:.3f} -> {last:.3f} in {a_steps} steps; resumed from "
            f"step {a_steps} to {b_steps}; exported (python)"
        )

    def mlp_resume_bit_identical(self, fig: dict[str, Any]) -> str:
        """An uninterrupted run to the same step as A+B must end with the same parameters."""
        b_steps = self.args.mlp_steps + self.args.mlp_steps // 2
        run_c = run_trainer(
            ["--model", "kubeforge.trainer.models:MLP", "--batch-size", "64", "--dataset-size", "8192",
             "--lr", "0.05", "--seed", "7", "--checkpoint-every", str(max(self.args.mlp_steps // 2, 1)),
             "--keep-last", "3", "--log-every", "10", "--steps", str(b_steps),
             "--checkpoint-dir", str(self.work / "mlp-c" / "checkpoints")],
            self.work / "train-mlp-c.log", self.trainer_log,
        )  # fmt: skip
        require(run_c.returncode == 0, f"run C exited {run_c.returncode}\n{tail(run_c.output)}")
        self._check_joined(run_c, "run C")
        b_digest = self._resumed_digest()
        fig["digest_uninterrupted"], fig["digest_resumed"] = run_c.digest(), b_digest
        fig["steps_per_s_run_c"] = run_c.steps_per_second()
        require(run_c.digest() is not None and run_c.digest() == b_digest,
                "the resumed run's parameters differ from an uninterrupted run's")  # fmt: skip
        return f"A ({self.args.mlp_steps} steps) + B (resumed to {b_steps}) == C ({b_steps} uninterrupted), sha256 equal"

    def _resumed_digest(self) -> str | None:
        text = (self.work / "train-mlp-b.log").read_text(errors="replace")
        found = DIGEST.findall(text)
        return found[-1][1] if found else None

    def train_lm(self, fig: dict[str, Any]) -> str:
        steps = self.args.lm_steps
        every = max(steps // 3, 1)
        checkpoints = self.work / "lm" / "checkpoints"
        run = run_trainer(
            ["--model", "kubeforge.trainer.language_model:ByteTransformer",
             "--steps", str(steps), "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.003",
             "--seed", "7", "--eval-every", str(every), "--checkpoint-every", str(every), "--keep-last", "2",
             "--log-every", "10", "--checkpoint-dir", str(checkpoints),
             "--output-uri", str(self.lm_repository), "--model-name", LM_NAME, "--export-format", "python-llm"],
            self.work / "train-lm.log", self.trainer_log, launcher="kubeforge.trainer.launch",
        )  # fmt: skip
        fig["run_seconds"] = run.seconds
        require(run.returncode == 0, f"exited {run.returncode}\n{tail(run.output)}")
        self._check_joined(run, "language model")
        losses, validation = run.losses(), run.validation()
        fig["steps"] = steps
        fig["loss_first_step10"], fig["loss_last"] = losses.get(10), losses.get(steps)
        fig["validation"] = validation
        fig["steps_per_s"] = run.steps_per_second()
        expected = sorted({*range(every, steps + 1, every), steps})
        require(
            sorted(validation) == expected, f"validation at steps {sorted(validation)}, expected {expected}"
        )
        require(losses[steps] < losses[10], f"training loss {losses[10]} -> {losses[steps]} did not fall")
        first_val, last_val = validation[expected[0]], validation[steps]
        require(last_val < first_val, f"validation loss {first_val} -> {last_val} did not fall")
        if steps >= 100:
            # tests/trainer/runs.py: 100 CPU steps reach about 2.47 nats per byte
            require(last_val < 2.6, f"validation loss {last_val} not below 2.6 after {steps} steps")
        progress = read_json(checkpoints / "progress.json")
        require(
            progress["state"] == "succeeded" and progress["validation"]["step"] == steps,
            f"progress {progress}",
        )
        model_dir = self.lm_repository / LM_NAME
        files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
        want = ["1/generation.py", "1/model.pt", "1/model.py", "config.pbtxt", "tokenizer_config.json"]
        require(files == want, f"export: {files}")
        return (
            f"backend {self.expected_backend} on {self.expected_device} via kubeforge.trainer.launch; "
            f"validation loss {first_val:.3f} -> {last_val:.3f} (perplexity {np.exp(last_val):.2f}); "
            "exported (python-llm)"
        )

    # -- 3. Triton ---------------------------------------------------------------------------------

    def _instance_groups(self) -> list[InstanceGroup]:
        return [InstanceGroup(kind=self.kind, count=1, gpus=[0] if self.gpu else None)]

    def _header(self) -> str:
        return EXPORT_HEADER + f"# instance_group set to {self.kind.value} by hack/gpu-check\n"

    def build_repository(self, fig: dict[str, Any]) -> str:
        """The exported models with their config re-rendered by Kubeforge's renderer with a GPU instance group."""
        shutil.rmtree(self.serve_repository, ignore_errors=True)
        self.serve_repository.mkdir(parents=True)
        # the classifier: the exporter's own ModelConfig, rebuilt from the TorchScript file
        source = self.mlp_repository / MLP_NAME
        traced = torch.jit.load(str(source / "1" / "model.pt"), map_location="cpu")
        example = torch.zeros(2, *MLP().input_shape)
        with torch.no_grad():
            output = traced(example)
        config = TritonModelConfig(
            max_batch_size=MAX_BATCH_SIZE,
            inputs=tensor_specs("INPUT", [example]),
            outputs=tensor_specs("OUTPUT", [output]),
            dynamic_batching=DynamicBatching(
                max_queue_delay_microseconds=RECOMMENDED_MAX_QUEUE_DELAY_MICROSECONDS
            ),
        )
        exported = (source / "config.pbtxt").read_text()
        require(render_config(MLP_NAME, ModelFormat.PYTHON, config, header=EXPORT_HEADER) == exported,
                "the rebuilt classifier config does not render to the exported config.pbtxt")  # fmt: skip
        target = self.serve_repository / MLP_NAME
        shutil.copytree(source, target)
        placed = config.model_copy(update={"instance_groups": self._instance_groups()})
        (target / "config.pbtxt").write_text(
            render_config(MLP_NAME, ModelFormat.PYTHON, placed, header=self._header())
        )
        # the language model: the exporter's config, instance group KIND_AUTO -> the explicit kind
        source = self.lm_repository / LM_NAME
        exported = (source / "config.pbtxt").read_text()
        config = language_model_config()
        require(render_config(LM_NAME, ModelFormat.PYTHON, config, header=EXPORT_HEADER) == exported,
                "language_model_config() does not render to the exported config.pbtxt")  # fmt: skip
        target = self.serve_repository / LM_NAME
        shutil.copytree(source, target)
        placed = config.model_copy(update={"instance_groups": self._instance_groups()})
        (target / "config.pbtxt").write_text(
            render_config(LM_NAME, ModelFormat.PYTHON, placed, header=self._header())
        )
        text = (target / "config.pbtxt").read_text()
        group = re.search(r"^instance_group \[$.*?^\]$", text, re.S | re.M)
        fig["instance_group"] = " ".join(group.group(0).split()) if group else None
        require(f"kind: {self.kind.value}" in text, f"no {self.kind.value} in the rendered config")
        return f"{MLP_NAME} and {LM_NAME} with instance_group {self.kind.value}" + (
            " gpus [0]" if self.gpu else ""
        )

    def start_triton(self, stack: contextlib.ExitStack, fig: dict[str, Any]) -> str:
        install = stub_install(fig)
        require("torch " in fig["stub_torch"], f"the stub's Python cannot import torch: {fig['stub_torch']}")
        extra_env = libpython_env(install, fig)
        log_path = self.out / "tritonserver.log"
        started = time.monotonic()
        self.server = stack.enter_context(
            run_tritonserver(
                repository=self.serve_repository,
                env=extra_env,
                install=install,
                wait="ready",
                startup_timeout=240,
                log_path=log_path,
            )
        )
        fig["startup_seconds"] = round(time.monotonic() - started, 1)
        text = self.server.log()
        kind = "GPU" if self.gpu else "CPU"
        for model in (MLP_NAME, LM_NAME):
            line = re.search(
                rf"TRITONBACKEND_ModelInstanceInitialize: {re.escape(model)}_0_0 \((\w+) device (\d+)\)", text
            )
            fig[f"{model}_instance"] = line.group(0) if line else None
            require(line is not None and line.group(1) == kind and line.group(2) == "0",
                    f"{model}: no '{kind} device 0' instance in the Triton log")  # fmt: skip
        index = http_json(f"{self.server.http_url}/v2/repository/index", {})
        fig["repository_index"] = {m["name"]: m.get("state") for m in index}
        require(all(m.get("state") == "READY" for m in index), f"repository index {index}")
        return (
            f"tritonserver ready in {fig['startup_seconds']} s, both models on a {kind} instance (device 0)"
        )

    def _stub_pids(self, model: str) -> list[int]:
        fragment = str(self.serve_repository / model) + "/"
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if (
                    argv
                    and argv[0].endswith(b"triton_python_backend_stub")
                    and fragment.encode() in b" ".join(argv)
                ):
                    pids.append(int(entry.name))
        return pids

    def _on_gpu(self, model: str, fig: dict[str, Any]) -> None:
        """Evidence that the model's stub process holds GPU memory (or, in a dry run, that it does not)."""
        pids = self._stub_pids(model)
        fig["stub_pids"] = pids
        require(pids, f"no Python-backend stub process found for {model}")
        mapped = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                maps = Path(f"/proc/{pid}/maps").read_text()
                mapped[pid] = "libcuda.so" in maps
        fig["stub_maps_libcuda"] = mapped
        if not self.gpu:
            require(not any(mapped.values()), "a CPU instance's stub loaded libcuda")
            fig["gpu_evidence"] = "n/a (CPU dry run: KIND_CPU, stub did not load libcuda)"
            return
        try:
            apps = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            apps = f"nvidia-smi failed: {exc}"
        ok, evidence, listed = gpu_evidence(pids, apps, mapped)
        fig["nvidia_smi_compute_apps"] = listed
        fig["gpu_evidence"] = evidence
        require(ok, f"the {model} stub (pids {pids}) is not shown on the GPU: {evidence}")

    def triton_classifier(self, fig: dict[str, Any]) -> str:
        assert self.server is not None
        url = f"{self.server.http_url}/v2/models/{MLP_NAME}"
        model = MLP()
        b_steps = self.args.mlp_steps + self.args.mlp_steps // 2
        state = load_checkpoint(self.work / "mlp-b" / "checkpoints" / f"ckpt-{b_steps:08d}.pt")
        model.load_state_dict(state["model"])
        model.eval()
        traced = torch.jit.load(str(self.serve_repository / MLP_NAME / "1" / "model.pt"), map_location="cpu")
        rng = np.random.default_rng(3)
        worst = 0.0
        for size in (1, 3, 8, MAX_BATCH_SIZE):
            batch = rng.standard_normal((size, 16), dtype=np.float32)
            body = {
                "inputs": [{"name": "INPUT__0", "shape": list(batch.shape), "datatype": "FP32",
                            "data": batch.reshape(-1).tolist()}],
                "outputs": [{"name": "OUTPUT__0"}],
            }  # fmt: skip
            answer = http_json(f"{url}/infer", body)
            (out,) = answer["outputs"]
            got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            with torch.no_grad():
                want = model(torch.from_numpy(batch)).numpy()
                want_ts = traced(torch.from_numpy(batch)).numpy()
            require(got.shape == (size, 4), f"batch {size}: output shape {got.shape}")
            worst = max(worst, float(np.abs(got - want).max()), float(np.abs(got - want_ts).max()))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got, want_ts, rtol=1e-4, atol=1e-4)
        fig["max_abs_diff_vs_cpu"] = worst
        # latency: sequential single-sample requests over HTTP/JSON, and full batches
        one = {"inputs": [{"name": "INPUT__0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        full = {"inputs": [{"name": "INPUT__0", "shape": [MAX_BATCH_SIZE, 16], "datatype": "FP32",
                            "data": [0.5] * (16 * MAX_BATCH_SIZE)}]}  # fmt: skip
        for name, body, count in (("batch1", one, 100), (f"batch{MAX_BATCH_SIZE}", full, 30)):
            times = []
            for _ in range(count):
                t0 = time.perf_counter()
                http_json(f"{url}/infer", body)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            fig[f"latency_ms_{name}"] = {
                "mean": round(statistics.mean(times), 3),
                "p50": round(times[len(times) // 2], 3),
                "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
                "n": count,
            }
        stats = http_json(f"{url}/stats")["model_stats"][0]
        fig["inference_count"] = stats["inference_count"]
        fig["execution_count"] = stats["execution_count"]
        self._on_gpu(MLP_NAME, fig)
        where = "GPU" if self.gpu else "CPU"
        return (
            f"served on {where}: equals the CPU model within 1e-4 (max |diff| {worst:.2e}); "
            f"p50 {fig['latency_ms_batch1']['p50']} ms per request; {fig.get('gpu_evidence')}"
        )

    def _cpu_generate(self, params: generation.SamplingParams) -> tuple[str, str]:
        """The same engine (generation.py) over the same TorchScript file, on the CPU in this process."""
        module = torch.jit.load(str(self.serve_repository / LM_NAME / "1" / "model.pt"), map_location="cpu")
        engine = generation.Engine(module.eval(), 1)
        texts: list[str] = []
        finish: list[str] = []

        class Collect:
            def send(self, text: str, finish_reason: str | None) -> None:
                texts.append(text)
                if finish_reason is not None:
                    finish.append(finish_reason)

            def fail(self, message: str) -> None:
                raise RuntimeError(message)

            def cancelled(self) -> bool:
                return False

        engine.submit(PROMPT.encode(), params, Collect())
        with torch.no_grad():
            while not finish:
                engine.step()
        return "".join(texts), finish[0]

    def _near_tie(self, served: str, cpu: str) -> tuple[int, float]:
        """Where two greedy texts part, and how close the CPU model's two candidates were there."""
        a, b = served.encode(), cpu.encode()
        index = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        module = torch.jit.load(str(self.serve_repository / LM_NAME / "1" / "model.pt"), map_location="cpu")
        context = (PROMPT.encode() + b[:index])[-int(module.context_length) :]
        with torch.no_grad():
            logits = module(torch.tensor([list(context)]))[0, -1]
        if index >= min(len(a), len(b)):
            return index, float("inf")
        return index, float(logits[b[index]] - logits[a[index]])

    def triton_lm(self, fig: dict[str, Any]) -> str:
        from kubeforge.testing.streaming import generate, model_metrics, stream_sse

        assert self.server is not None
        http = self.server.http_url
        # greedy: the served model against the same engine on the CPU
        greedy = {"text_input": PROMPT, "max_tokens": 64, "temperature": 0}
        streamed = stream_sse(http, LM_NAME, greedy)
        whole = generate(http, LM_NAME, {**greedy, "stream": False})
        cpu_text, _ = self._cpu_generate(generation.SamplingParams(max_tokens=64, temperature=0.0))
        fig["greedy_served"] = streamed.text
        fig["greedy_cpu"] = cpu_text
        require(len(streamed.responses) == 64 and streamed.finish_reason == "length",
                f"{len(streamed.responses)} responses, finish {streamed.finish_reason!r}")  # fmt: skip
        require(whole.text == streamed.text, "the non-streaming endpoint's text differs from the stream's")
        if streamed.text != cpu_text:
            index, gap = self._near_tie(streamed.text, cpu_text)
            fig["greedy_diverges_at_byte"], fig["cpu_logit_gap_there"] = index, gap
            require(abs(gap) < 0.01, f"greedy text differs from the CPU engine's at byte {index} "
                    f"(CPU logit gap {gap:.4f}: not a numerical tie)")  # fmt: skip
        fig["greedy_matches_cpu"] = streamed.text == cpu_text
        self.greedy_40 = stream_sse(http, LM_NAME, {**greedy, "max_tokens": 40}).text
        # seeded sampling: the same seed twice gives the same text (and, sampling being on the CPU, the CPU's)
        seeded = {"max_tokens": 64, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 11}
        first = stream_sse(http, LM_NAME, {"text_input": PROMPT, **seeded})
        again = stream_sse(http, LM_NAME, {"text_input": PROMPT, **seeded})
        require(first.text == again.text, "the same seed gave two different texts")
        cpu_seeded, _ = self._cpu_generate(generation.SamplingParams(64, 0.8, 40, 0.95, 11))
        fig["seeded_matches_cpu"] = first.text == cpu_seeded
        # speed: one long stream, then 8 at once (continuous batching shares the forward passes)
        long = stream_sse(http, LM_NAME, {"text_input": PROMPT, "max_tokens": 256, "temperature": 0})
        fig["ttft_ms"] = round(long.time_to_first_token * 1000, 2)
        fig["tokens_per_s_one_stream"] = round(256 / long.duration, 1)
        before = model_metrics(self.server.metrics_url, LM_NAME)
        results: dict[int, Any] = {}

        def one(seed: int) -> None:
            results[seed] = stream_sse(http, LM_NAME, {"text_input": PROMPT, "max_tokens": 128, "seed": seed})

        threads = [threading.Thread(target=one, args=(seed,)) for seed in range(8)]
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        seconds = time.monotonic() - t0
        after = model_metrics(self.server.metrics_url, LM_NAME)
        require(len(results) == 8 and all(len(r.responses) == 128 for r in results.values()),
                "not every concurrent stream finished")  # fmt: skip
        tokens = after["kubeforge_generated_tokens_total"] - before["kubeforge_generated_tokens_total"]
        passes = after["kubeforge_forward_passes_total"] - before["kubeforge_forward_passes_total"]
        fig["tokens_per_s_8_streams"] = round(8 * 128 / seconds, 1)
        fig["tokens_per_forward_pass_8_streams"] = round(tokens / passes, 2) if passes else None
        self._on_gpu(LM_NAME, fig)
        where = "GPU" if self.gpu else "CPU"
        match = "equals" if streamed.text == cpu_text else "equals up to a numerical tie"
        return (
            f"served on {where}: greedy text {match} the CPU engine's; same seed, same text; "
            f"TTFT {fig['ttft_ms']} ms, {fig['tokens_per_s_one_stream']} tok/s (1 stream), "
            f"{fig['tokens_per_s_8_streams']} tok/s (8 streams); {fig.get('gpu_evidence')}"
        )

    def openai_front(self, fig: dict[str, Any]) -> str:
        try:
            import aiohttp  # noqa: F401 - the front's HTTP server and client
        except ImportError as exc:
            raise CheckFailed(f"aiohttp is not importable ({exc}): the front cannot run") from exc
        from kubeforge.testing.openai_front import running_front

        assert self.server is not None and self.greedy_40 is not None
        args = [
            "--triton",
            self.server.http_url,
            "--repository",
            str(self.serve_repository),
            "--model",
            LM_NAME,
        ]
        log_path = self.out / "openai-front.log"
        with running_front(args, log_path, timeout=60) as front:
            t0 = time.perf_counter()
            status, body = front.call(
                "/v1/completions", {"model": LM_NAME, "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
            )
            fig["completion_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            require(status == 200, f"/v1/completions: HTTP {status}: {body[:300]!r}")
            completion = json.loads(body)
            (choice,) = completion["choices"]
            fig["completion_text"] = choice["text"]
            fig["usage"] = completion.get("usage")
            require(choice["text"] == self.greedy_40, "the completion differs from Triton's own greedy text")
            require(choice["finish_reason"] == "length", f"finish_reason {choice['finish_reason']}")
            t0 = time.perf_counter()
            status, raw = front.call(
                "/v1/chat/completions",
                {"model": LM_NAME, "messages": [{"role": "user", "content": "What is light?"}],
                 "max_tokens": 32, "temperature": 0, "stream": True},
            )  # fmt: skip
            fig["chat_stream_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            require(status == 200, f"/v1/chat/completions: HTTP {status}: {raw[:300]!r}")
            events = [e for e in raw.decode().split("\n\n") if e.startswith("data: ")]
            require(events and events[-1] == "data: [DONE]", f"stream did not end with [DONE]: {events[-2:]}")
            chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
            content = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
            )
            reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
            fig["chat_chunks"], fig["chat_content"] = len(chunks), content
            require(content.strip(), "the chat stream carried no content")
            require("length" in reasons, f"finish reasons {set(reasons)}")
        return (
            f"/v1/completions equals Triton's greedy text; /v1/chat/completions streamed {len(chunks)} chunks"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--allow-cpu", action="store_true", help="dry run on a machine without CUDA")
    parser.add_argument("--mlp-steps", type=int, default=200, help="run A's steps; run B resumes to 1.5x")
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all checks")
    args = parser.parse_args()
    # run.sh's timeout sends SIGTERM: unwind, so tritonserver (its own session) is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    cuda = torch.cuda.is_available()  # asks the driver; creates no CUDA context in this process
    report = Report(args.out, "gpu" if cuda else "cpu-dry-run", deadline)
    log(f"mode {report.doc['mode']}; work in {args.work}; results in {args.out}")
    if not cuda and not args.allow_cpu:
        report.record("environment", "FAIL", {}, "torch sees no CUDA device (GPU_CHECK_ALLOW_CPU=1: dry run)")
        return report.finish()
    check = GpuCheck(args, "gpu" if cuda else "cpu")
    if not report.run("environment", check.environment):
        return report.finish()
    try:
        report.run("train_mlp_nccl_resume_export", check.train_mlp, ("environment",))
        report.run("train_lm_export_python_llm", check.train_lm, ("environment",), min_seconds=60)
        report.run("triton_repository_gpu_instance_groups", check.build_repository,
                   ("train_mlp_nccl_resume_export", "train_lm_export_python_llm"))  # fmt: skip
        with contextlib.ExitStack() as stack:
            report.run("triton_start", lambda fig: check.start_triton(stack, fig),
                       ("triton_repository_gpu_instance_groups",), min_seconds=60)  # fmt: skip
            report.run("triton_classifier_http", check.triton_classifier, ("triton_start",))
            report.run("triton_llm_stream", check.triton_lm, ("triton_start",))
            report.run("openai_front", check.openai_front, ("triton_llm_stream",))
        # last, with the GPU free again: the cheapest evidence to lose when time runs short
        report.run("train_mlp_resume_bit_identical", check.mlp_resume_bit_identical,
                   ("train_mlp_nccl_resume_export",), min_seconds=45)  # fmt: skip
    except SystemExit:
        report.doc["overall"] = "INTERRUPTED"  # run.sh's timeout: what finished is in "checks"
        report.write()
        raise
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
