"""The model cache: `kubeforge fill-cache` fills a claim once from real sources (moto's S3, a loopback
Hugging Face Hub), atomically; `assemble-repository --cache-dir` serves from it without a download,
refuses a partial fill, and the real tritonserver loads the models through the links."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.cache import build_cache_fill_job, model_cache_key
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.settings import Settings
from kubeforge.testing.hub import FakeHub, HubRepository, serve_hub
from kubeforge.testing.triton import TritonInstall
from kubeforge.testing.triton_pod import run_init_container, run_triton_container
from kubeforge.triton.cache import MARKER, PARTIAL_SUFFIX, PLAN_ENV, CacheEntry, fill_cache, measure
from kubeforge.triton.repository import assemble_repository, parse_plan

from .models import ADD_MODEL_PY, add_model_config, double_model_archive, write_add_model

SECRET = "hf_s3cr3t-t0ken-never-logged"


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint}


def cached_md(source: str, **spec: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1", "generation": 1},
            "spec": {
                "models": [
                    {"name": "add", "source": source, "format": "python", "config": add_model_config()}
                ],
                "storage": {"secretName": "creds"},
                "cache": {"size": "1Gi"},
                **spec,
            },
        }
    )


def run_fill(md: ModelDeployment, cache_root: Path, tmp: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the fill Job's container as the builder makes it; (exit code, termination message, log)."""
    job = build_cache_fill_job(md, Settings())
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    log = tmp / "termination-log"
    log.unlink(missing_ok=True)
    done = run_init_container(
        container, paths={"/cache": cache_root, "/dev/termination-log": log, "/mnt/pvc": tmp / "pvc"}, env=env
    )
    return done.returncode, log.read_text() if log.exists() else "", done.stdout + done.stderr


@pytest.mark.triton
def test_fill_from_s3_then_serve_from_the_cache_without_a_download(
    s3_endpoint: str, bucket: Any, tmp_path: Path, triton_install: TritonInstall
) -> None:
    bucket.put_object(Key="team/add/1/model.py", Body=ADD_MODEL_PY.encode())
    bucket.put_object(Key="team/add/labels.txt", Body=b"sum\n")
    md = cached_md(f"s3://{bucket.name}/team/add")
    key = model_cache_key(md)
    assert key is not None
    cache_root = tmp_path / "cache"
    cache_root.mkdir()

    code, message, log = run_fill(md, cache_root, tmp_path, s3_env(s3_endpoint))
    assert code == 0, log
    summary = json.loads(message)
    fetched = cache_root / key / "models" / "add"
    assert (fetched / "1" / "model.py").read_text() == ADD_MODEL_PY
    assert (summary["bytes"], summary["digest"]) == measure(cache_root / key)
    assert summary["bytes"] == len(ADD_MODEL_PY) + 4
    assert json.loads((cache_root / key / MARKER).read_text()) == summary

    # the object store is emptied: whatever the serving pod does, it cannot download
    bucket.objects.all().delete()
    pod = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert [e["name"] for e in init["env"]] == ["KUBEFORGE_MODELS"]  # no credentials at all
    repo = tmp_path / "repo"
    done = run_init_container(init, paths={"/models": repo, "/cache": cache_root})
    assert done.returncode == 0, done.stderr
    assert (repo / "add" / "1").is_symlink()
    assert (repo / "add" / "1").resolve() == (fetched / "1").resolve()
    assert (repo / "add" / "labels.txt").is_symlink()
    assert "max_batch_size: 8" in (repo / "add" / "config.pbtxt").read_text()

    with run_triton_container(
        pod["containers"][0], paths={"/models": repo, "/cache": cache_root}, install=triton_install
    ) as server:
        client = httpclient.InferenceServerClient(server.http_address)
        a = np.ones((1, 4), dtype=np.float32)
        inputs = [httpclient.InferInput("A", [1, 4], "FP32"), httpclient.InferInput("B", [1, 4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a * 2)
        result = client.infer("add", inputs)
        assert result.as_numpy("SUM").tolist() == [[3.0, 3.0, 3.0, 3.0]]


def test_a_rerun_of_a_complete_fill_fetches_nothing(tmp_path: Path) -> None:
    write_add_model(tmp_path / "pvc" / "models" / "add")
    md = cached_md("pvc://models/add")
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    code, first, log = run_fill(md, cache_root, tmp_path, {})
    assert code == 0, log
    (tmp_path / "pvc" / "models" / "add" / "1" / "model.py").unlink()  # the source is gone
    code, again, log = run_fill(md, cache_root, tmp_path, {})
    assert (code, again) == (0, first), log
    assert "complete already" in log


def test_a_partial_fill_is_discarded_and_never_served(tmp_path: Path) -> None:
    write_add_model(tmp_path / "pvc" / "models" / "add")
    md = cached_md("pvc://models/add")
    key = model_cache_key(md)
    assert key is not None
    cache_root = tmp_path / "cache"
    # what a fill killed half-way leaves: a staging folder, or a renamed folder without its marker
    (cache_root / f"{key}{PARTIAL_SUFFIX}" / "models" / "add").mkdir(parents=True)
    (cache_root / f"{key}{PARTIAL_SUFFIX}" / "junk").write_text("half")
    (cache_root / key / "models" / "add" / "1").mkdir(parents=True)
    (cache_root / key / "models" / "add" / "1" / "model.py").write_text("# truncated")

    init = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]["initContainers"][0]
    refused = run_init_container(init, paths={"/models": tmp_path / "repo", "/cache": cache_root})
    assert refused.returncode == 1
    assert "not complete (no COMPLETE marker)" in refused.stderr
    assert not (tmp_path / "repo" / "add").exists()

    code, _, log = run_fill(md, cache_root, tmp_path, {})
    assert code == 0, log
    assert not (cache_root / f"{key}{PARTIAL_SUFFIX}").exists()
    assert (cache_root / key / "models" / "add" / "1" / "model.py").read_text() == ADD_MODEL_PY
    served = run_init_container(init, paths={"/models": tmp_path / "repo", "/cache": cache_root})
    assert served.returncode == 0, served.stderr


def test_a_failed_fill_says_why_and_leaves_no_cache(s3_endpoint: str, tmp_path: Path) -> None:
    md = cached_md("s3://no-such-bucket/add")
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    code, message, log = run_fill(md, cache_root, tmp_path, s3_env(s3_endpoint))
    assert code == 1, log
    assert message.startswith("cache fill failed: models/add from s3://no-such-bucket/add:")
    assert "NoSuchBucket" in message
    assert list(cache_root.iterdir()) == []


def test_hugging_face_source_with_a_token_from_the_environment_only(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "qwen"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text('{"model_type": "qwen2"}')
    (repo / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    hub = FakeHub({"org/tiny": HubRepository(repo, revision="v1", token=SECRET)})
    entries = [CacheEntry("models/llm", "hf://org/tiny@v1")]
    with serve_hub(hub):
        env = dict(os.environ) | {"HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET}
        env[PLAN_ENV] = json.dumps([{"path": e.path, "source": e.source} for e in entries])
        argv = ["fill-cache", "--root", str(tmp_path / "cache"), "--key", "k1"]
        argv += ["--termination-log", str(tmp_path / "term")]
        done = subprocess.run(
            [sys.executable, "-m", "kubeforge", *argv], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert set(hub.authorizations) == {f"Bearer {SECRET}"}  # the token travels as a header only
        for seen in (done.stdout, done.stderr, (tmp_path / "term").read_text(), " ".join(argv)):
            assert SECRET not in seen
        fetched = tmp_path / "cache" / "k1" / "models" / "llm"
        assert sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()) == [
            "config.json",
            "sub/model.safetensors",
        ]

        hub.authorizations.clear()
        wrong = env | {"HF_TOKEN": "hf_wrong"}
        failed = subprocess.run(
            [sys.executable, "-m", "kubeforge", *[a.replace("k1", "k2") for a in argv]],
            env=wrong,
            capture_output=True,
            text=True,
            check=False,
        )
        assert failed.returncode == 1
        message = (tmp_path / "term").read_text()
        assert "hf://org/tiny@v1" in message and "401" in message
        assert "hf_wrong" not in message + failed.stderr + failed.stdout


def test_a_vllm_model_reads_its_weights_and_adapters_in_the_cache(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache" / "k"
    (cache_dir / "models" / "llm").mkdir(parents=True)
    (cache_dir / "models" / "llm" / "config.json").write_text("{}")
    (cache_dir / "adapters" / "llm" / "sql").mkdir(parents=True)
    (cache_dir / MARKER).write_text(json.dumps({"bytes": 2, "digest": "sha256:x"}))
    spec = {
        "name": "llm",
        "source": "hf://org/tiny@v1",
        "format": "vllm",
        "llm": {"loraAdapters": [{"name": "sql", "source": "s3://adapters/sql"}]},
    }
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1"},
            "spec": {
                "models": [spec],
                "gpu": {"count": 1},
                "cache": {"size": "10Gi"},
                "storage": {"secretName": "creds"},
            },
        }
    )
    init = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]["initContainers"][0]
    plan = parse_plan(next(e["value"] for e in init["env"] if e["name"] == "KUBEFORGE_MODELS"))
    out = tmp_path / "models"
    assert assemble_repository(plan, out, tmp_path, {}, cache_dir=cache_dir) == []
    model_json = json.loads((out / "llm" / "1" / "model.json").read_text())
    assert model_json["model"] == str(cache_dir / "models" / "llm")
    lora = json.loads((out / "llm" / "1" / "multi_lora.json").read_text())
    assert lora == {"sql": str(cache_dir / "adapters" / "llm" / "sql")}
    assert not (out / "llm" / "weights").exists()


def test_an_operators_claim_keeps_the_previous_fill_only(tmp_path: Path) -> None:
    write_add_model(tmp_path / "pvc" / "models" / "add")
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    for index, old in enumerate(("k-oldest", "k-previous")):
        (cache_root / old).mkdir()
        (cache_root / old / MARKER).write_text(json.dumps({"completedAt": f"2026-11-2{index}T00:00:00Z"}))
    (cache_root / "k-other.partial").mkdir()  # another fill in progress: not ours to judge
    md = cached_md("pvc://models/add")
    job = build_cache_fill_job(md, Settings())
    assert job is not None and "--prune" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    code, _, log = run_fill(md, cache_root, tmp_path, {})
    assert code == 0, log
    key = model_cache_key(md)
    assert sorted(p.name for p in cache_root.iterdir()) == sorted([str(key), "k-previous", "k-other.partial"])
    # a claim of the user's may be shared: nothing else on it is touched
    shared = cached_md("pvc://models/add", cache={"claimName": "shared"})
    job = build_cache_fill_job(shared, Settings())
    assert job is not None and "--prune" not in job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_https_archives_and_gs_prefixes_fill_the_cache_too(
    file_server: tuple[str, Path], s3_endpoint: str, bucket: Any, tmp_path: Path
) -> None:
    base, www = file_server
    (www / "double.tar.gz").write_bytes(double_model_archive())
    bucket.put_object(Key="add/1/model.py", Body=ADD_MODEL_PY.encode())
    entries = [
        CacheEntry("models/double", f"{base}/double.tar.gz"),
        CacheEntry("models/add", f"gs://{bucket.name}/add"),
    ]
    env = s3_env(s3_endpoint) | {"KUBEFORGE_GCS_ENDPOINT_URL": s3_endpoint}
    summary = fill_cache(entries, tmp_path / "cache", "k", env)
    key_dir = tmp_path / "cache" / "k"
    assert (key_dir / "models" / "double" / "config.pbtxt").is_file()
    assert (key_dir / "models" / "add" / "1" / "model.py").read_text() == ADD_MODEL_PY
    assert (summary["bytes"], summary["digest"]) == measure(key_dir)
