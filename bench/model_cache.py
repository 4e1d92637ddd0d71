"""`python -m bench.model_cache`: a replica's cold start with the model cache vs downloading its model.

A Python-backend model with a weights file of a few hundred MB (random bytes, generated on the fly,
never committed) whose `initialize` reads every byte, as loading real weights does. Both paths run
the operator's own pod spec (the Deployment builder's init container and tritonserver container,
with paths and ports made local) against the real tritonserver on CPU:

- **download** (no spec.cache): the init container fetches the model from S3 (a moto server on
  loopback, with credentials) into the pod's repository, then Triton loads it; once straight from
  moto (the floor of any download), once through a proxy that passes 100 MB/s (about one S3 stream);
- **cache** (spec.cache): the fill Job's container filled the cache once (timed, reported apart); the
  init container links the model from the cache (no credentials, no network), then Triton loads it.

A cold start is the time from the init container's start to `/v2/health/ready` answering 200; its
two parts (init container, Triton load) are reported too. Runs alternate between the two paths, and
the ratio is of the medians of the same run. Every file is fresh in the page cache on both paths (a
download writes it, the fill wrote it), so the ratio is the download's cost, not a disk's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import machine, write_results
from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.cache import build_cache_fill_job, model_cache_key
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.settings import Settings
from kubeforge.testing.triton import find_tritonserver, free_port
from kubeforge.testing.triton_pod import run_init_container, run_triton_container

WEIGHTS_MB = 400
RUNS = 3
THROTTLE_MB_S = 100.0  # about one S3 GET stream
MODEL_PY = """
import hashlib

import numpy as np
import triton_python_backend_utils as pb_utils
from pathlib import Path


class TritonPythonModel:
    def initialize(self, args):
        # read every byte of the weights, as loading a real model does
        path = Path(args["model_repository"]) / args["model_version"] / "weights.bin"
        self.weights = np.fromfile(path, dtype=np.uint8)
        self.checksum = int(self.weights[:: 4096].sum())

    def execute(self, requests):
        out = np.array([[self.checksum]], dtype=np.int64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("CHECKSUM", out)]) for _ in requests]
"""
CONFIG = {
    "maxBatchSize": 0,
    "instanceGroups": [{"kind": "KIND_CPU", "count": 1}],
    "inputs": [{"name": "X", "dataType": "TYPE_FP32", "dims": [1]}],
    "outputs": [{"name": "CHECKSUM", "dataType": "TYPE_INT64", "dims": [1, 1]}],
}
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ThrottledProxy:
    """A TCP proxy on loopback that passes the server's answers at most `rate` bytes/s (one shared
    budget across connections, like one link): the object store as far away as a real one."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target, self.rate = target, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._next = time.monotonic()
        threading.Thread(target=self._accept, daemon=True).start()

    def _spend(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + size / self.rate
            wait = self._next - now - size / self.rate
        if wait > 0:
            time.sleep(wait)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, throttle: bool) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if throttle:
                    self._spend(len(chunk))
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _md(source: str, cache: bool) -> ModelDeployment:
    spec: dict[str, Any] = {
        "models": [{"name": "big", "source": source, "format": "python", "config": CONFIG}],
        "storage": {"secretName": "s3-credentials"},
    }
    if cache:
        spec["cache"] = {"size": "10Gi"}
    return ModelDeployment.model_validate(
        {"metadata": {"name": "bench", "namespace": "bench", "uid": "u"}, "spec": spec}
    )


def _cold_start(md: ModelDeployment, paths: dict[str, Path], env: dict[str, str]) -> dict[str, float]:
    """Init container + Triton until ready, as one replica of `md` would start; seconds."""
    pod = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]
    started = time.monotonic()
    done = run_init_container(pod["initContainers"][0], paths=paths, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"init container failed: {done.stderr[-2000:]}")
    initialized = time.monotonic()
    with run_triton_container(
        pod["containers"][0], paths=paths, install=find_tritonserver(), wait=None
    ) as server:
        server.wait_until("ready", timeout=600)
        ready = time.monotonic()
    return {"init_s": initialized - started, "load_s": ready - initialized, "total_s": ready - started}


def run(weights_mb: int, runs: int, throttle_mb_s: float) -> dict[str, Any]:
    import boto3
    from moto.server import ThreadedMotoServer

    results: dict[str, Any] = {"weights_mb": weights_mb, "runs": runs, "throttle_mb_s": throttle_mb_s}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    proxy = ThrottledProxy((host, int(port)), throttle_mb_s * (1 << 20))
    throttled_env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    try:
        with tempfile.TemporaryDirectory(prefix="kubeforge-bench-cache-") as tmp:
            root = Path(tmp)
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                **{"aws_access_key_id": "bench", "aws_secret_access_key": "bench"},
            )
            s3.create_bucket(Bucket="models")
            weights = root / "weights.bin"
            with weights.open("wb") as f:
                for _ in range(weights_mb):
                    f.write(os.urandom(1 << 20))
            s3.upload_file(str(weights), "models", "big/1/weights.bin")
            s3.put_object(Bucket="models", Key="big/1/model.py", Body=MODEL_PY.encode())
            weights.unlink()
            source = "s3://models/big"

            # the one-time fill, by the fill Job's own container
            cached = _md(source, cache=True)
            job = build_cache_fill_job(cached, Settings())
            assert job is not None
            cache_root = root / "cache"
            cache_root.mkdir()
            started = time.monotonic()
            done = run_init_container(
                job["spec"]["template"]["spec"]["containers"][0],
                paths={"/cache": cache_root, "/dev/termination-log": root / "termination-log"},
                env=env,
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"fill failed: {done.stderr[-2000:]}")
            results["fill_s"] = time.monotonic() - started
            results["fill_summary"] = (root / "termination-log").read_text()
            results["cache_key"] = model_cache_key(cached)

            samples: dict[str, list[dict[str, float]]] = {"download": [], "throttled": [], "cache": []}
            for index in range(runs):
                for path in samples:
                    repo = root / f"repo-{path}-{index}"
                    if path == "download":
                        sample = _cold_start(_md(source, cache=False), {"/models": repo}, env)
                    elif path == "throttled":
                        sample = _cold_start(_md(source, cache=False), {"/models": repo}, throttled_env)
                    else:  # no credentials and no endpoint: it cannot download even if it tried
                        sample = _cold_start(cached, {"/models": repo, "/cache": cache_root}, {})
                    samples[path].append(sample)
                    print(
                        f"  run {index + 1} {path:8}: {sample['total_s']:.2f} s "
                        f"(init {sample['init_s']:.2f} s, load {sample['load_s']:.2f} s)",
                        flush=True,
                    )
            results["samples"] = samples
            for path, values in samples.items():
                results[path] = {
                    k: statistics.median(v[k] for v in values) for k in ("init_s", "load_s", "total_s")
                }
            results["ratio"] = results["download"]["total_s"] / results["cache"]["total_s"]
            results["ratio_throttled"] = results["throttled"]["total_s"] / results["cache"]["total_s"]
    finally:
        proxy.close()
        server.stop()
    return results


def table(results: dict[str, Any]) -> str:
    d, t, c = results["download"], results["throttled"], results["cache"]
    rate = results["throttle_mb_s"]
    lines = [
        f"# Model cache: a replica's cold start ({results['weights_mb']} MB of weights, real Triton on CPU)",
        "",
        f"{results['date']}; {results['machine']['cores']} cores; median of {results['runs']} runs per path, "
        "alternating, in one run; load average "
        f"{results['load_average_at_start']:.1f} at the start, {results['load_average_at_end']:.1f} at the end.",
        "",
        "| path | cold start (init container + Triton load) | init container | Triton load |",
        "|---|---|---|---|",
        f"| download from S3 (moto on loopback), no cache | {d['total_s']:.2f} s | {d['init_s']:.2f} s | {d['load_s']:.2f} s |",
        f"| download from S3 at {rate:.0f} MB/s (moto behind a rate-limited proxy), no cache | {t['total_s']:.2f} s | {t['init_s']:.2f} s | {t['load_s']:.2f} s |",
        f"| from the model cache (links, no network) | {c['total_s']:.2f} s | {c['init_s']:.2f} s | {c['load_s']:.2f} s |",
        f"| **ratio download / cache** (loopback; at {rate:.0f} MB/s) | **{results['ratio']:.2f}x; {results['ratio_throttled']:.2f}x** | | |",
        "",
        f"The one-time fill (`kubeforge fill-cache`, the fill Job's container, from the same S3): "
        f"{results['fill_s']:.2f} s; its summary: `{results['fill_summary']}`.",
        "",
        "On loopback moto has no latency or bandwidth limit: the download's floor. One S3 or Hugging Face "
        f"stream gives tens to a few hundred MB/s; the {rate:.0f} MB/s row puts moto that far away (one "
        "budget for the link). The cache's own cost is the init container (Python start, links) and "
        "Triton reading the weights; a cache on network storage (e.g. NFS) would lengthen that load, "
        "which here reads files that the fill or the download left in the page cache.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; nothing is written")
    parser.add_argument("--weights-mb", type=int, default=WEIGHTS_MB)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument(
        "--throttle-mb-s", type=float, default=THROTTLE_MB_S, help="the rate-limited download's bandwidth"
    )
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    # the valueFrom entries (credentials by reference) are what `env` stands in for here
    logging.getLogger("kubeforge.testing.triton_pod").setLevel(logging.ERROR)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    results["load_average_at_start"] = os.getloadavg()[0]
    results.update(
        run(8 if args.smoke else args.weights_mb, 1 if args.smoke else args.runs, args.throttle_mb_s)
    )
    results["load_average_at_end"] = os.getloadavg()[0]
    text = table(results)
    print(text)
    if not args.smoke:
        print(f"written: {write_results('model-cache', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
