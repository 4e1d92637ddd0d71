"""`kubeforge assemble-repository`: models from pvc:// and http(s):// laid out as Triton loads them."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kubeforge.api.modeldeployment import ModelSpec
from kubeforge.triton import repository, sources
from kubeforge.triton.repository import (
    PLAN_ENV,
    STAGING_DIRNAME,
    PlannedModel,
    assemble_repository,
    main,
    repository_plan,
)

from .models import add_model_spec, double_model_archive, tar_gz, write_add_model


@pytest.fixture
def pvc_root(tmp_path: Path) -> Path:
    """A fake `/mnt/pvc` with the claim `models` holding the add model under `add/`."""
    root = tmp_path / "pvc"
    write_add_model(root / "models" / "add")
    return root


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "models"


def run(monkeypatch: pytest.MonkeyPatch, plan: str, out: Path, pvc_root: Path) -> int:
    monkeypatch.setenv(PLAN_ENV, plan)
    return main(["--out", str(out), "--pvc-root", str(pvc_root)])


def served_config(out: Path, name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((out / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def planned(name: str, source: str, config: str | None = None) -> PlannedModel:
    return PlannedModel(name=name, source=source, format="python", config_pbtxt=config)


def test_pvc_model_is_copied_with_its_rendered_config(
    monkeypatch: pytest.MonkeyPatch, pvc_root: Path, out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = add_model_spec("adder", "pvc://models/add", init_sleep_seconds="0")
    with caplog.at_level(logging.INFO):
        assert run(monkeypatch, repository_plan([spec]), out, pvc_root) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adder"]  # no staging left behind
    assert (out / "adder" / "1" / "model.py").read_text() == (pvc_root / "models/add/1/model.py").read_text()
    config = served_config(out, "adder")
    assert (config.name, config.backend, config.max_batch_size) == ("adder", "python", 8)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert "model adder: fetching pvc://models/add" in caplog.text
    assert "model repository ready: adder" in caplog.text


def test_rerun_replaces_what_a_previous_attempt_left(pvc_root: Path, out: Path) -> None:
    plan = [planned("add", "pvc://models/add")]
    (out / STAGING_DIRNAME / "add" / "junk").mkdir(parents=True)
    (out / "add" / "7").mkdir(parents=True)
    assert assemble_repository(plan, out, pvc_root, {}) == []
    assert assemble_repository(plan, out, pvc_root, {}) == []
    assert sorted(p.name for p in out.iterdir()) == ["add"]
    assert sorted(p.name for p in (out / "add").iterdir()) == ["1"]


def test_spec_config_is_merged_over_the_source_config(pvc_root: Path, out: Path) -> None:
    source_config = """
    name: "old"
    platform: "pytorch_libtorch"
    max_batch_size: 2
    version_policy { latest { num_versions: 2 } }
    input [ { name: "OLD" data_type: TYPE_FP32 dims: [ 1 ] } ]
    dynamic_batching { max_queue_delay_microseconds: 5 }
    optimization { input_pinned_memory { enable: false } }
    """
    (pvc_root / "models" / "add" / "config.pbtxt").write_text(source_config)
    plan = repository.parse_plan(repository_plan([add_model_spec("add", "pvc://models/add")]))
    assert assemble_repository(plan, out, pvc_root, {}) == []
    config = served_config(out, "add")
    # the spec owns identity, batching and the tensors it lists ...
    assert (config.name, config.platform, config.backend, config.max_batch_size) == ("add", "", "python", 8)
    assert [i.name for i in config.input] == ["A", "B"]
    assert config.dynamic_batching.max_queue_delay_microseconds == 20000
    # ... and what it cannot say stays as the source had it
    assert config.version_policy.latest.num_versions == 2
    assert config.optimization.input_pinned_memory.enable is False


def test_ensemble_keeps_its_scheduling(pvc_root: Path, out: Path) -> None:
    ensemble_dir = pvc_root / "models" / "pipeline"
    (ensemble_dir / "1").mkdir(parents=True)
    (ensemble_dir / "config.pbtxt").write_text(
        'platform: "ensemble"\nensemble_scheduling { step [ { model_name: "add" model_version: -1 } ] }\n'
    )
    spec = ModelSpec.model_validate(
        {
            "name": "pipeline",
            "source": "pvc://models/pipeline",
            "format": "ensemble",
            "config": {"maxBatchSize": 4},
        }
    )
    assert assemble_repository(repository.parse_plan(repository_plan([spec])), out, pvc_root, {}) == []
    config = served_config(out, "pipeline")
    assert (config.name, config.platform, config.max_batch_size) == ("pipeline", "ensemble", 4)
    assert config.ensemble_scheduling.step[0].model_name == "add"


def test_failures_name_the_model_and_source_and_all_models_are_tried(
    monkeypatch: pytest.MonkeyPatch, pvc_root: Path, out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (pvc_root / "models" / "empty").mkdir()
    (pvc_root / "models" / "renamed" / "1").mkdir(parents=True)
    (pvc_root / "models" / "renamed" / "config.pbtxt").write_text('name: "original"\nbackend: "python"\n')
    plan = repository_plan(
        [
            add_model_spec("add", "pvc://models/add"),
            add_model_spec("missing", "pvc://models/nowhere"),
            add_model_spec("climber", "pvc://models/../../etc"),
        ]
    )
    extra = [
        {"name": "empty", "source": "pvc://models/empty", "format": "python", "configPbtxt": None},
        {"name": "renamed", "source": "pvc://models/renamed", "format": "python", "configPbtxt": None},
        {"name": "ftp", "source": "ftp://host/model", "format": "python", "configPbtxt": None},
    ]
    plan = json.dumps([*json.loads(plan), *extra])
    assert run(monkeypatch, plan, out, pvc_root) == 1
    assert sorted(p.name for p in out.iterdir()) == ["add"]  # the good model is in place regardless
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[:-1] == [
        f"model 'missing' from pvc://models/nowhere: {pvc_root}/models/nowhere is not a directory "
        f"(is the claim 'models' mounted at {pvc_root}/models?)",
        "model 'climber' from pvc://models/../../etc: not a pvc://<claim>/<path> URI without '..'",
        "model 'empty' from pvc://models/empty: no numeric version directory (e.g. 1/) in the model "
        "directory; found nothing",
        "model 'renamed' from pvc://models/renamed: config.pbtxt names the model 'original'; "
        "rename it to 'renamed' or set the spec's config",
        "model 'ftp' from ftp://host/model: unsupported source scheme 'ftp'",
    ]
    assert errors[-1] == "5 of 6 model(s) failed: missing, climber, empty, renamed, ftp"


def test_missing_or_bad_plan_exits_2(monkeypatch: pytest.MonkeyPatch, pvc_root: Path, out: Path) -> None:
    monkeypatch.delenv(PLAN_ENV, raising=False)
    assert main(["--out", str(out), "--pvc-root", str(pvc_root)]) == 2
    assert run(monkeypatch, "[", out, pvc_root) == 2


def test_plan_file(tmp_path: Path, pvc_root: Path, out: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(repository_plan([add_model_spec("add", "pvc://models/add")]))
    assert main(["--out", str(out), "--pvc-root", str(pvc_root), "--plan-file", str(plan_file)]) == 0
    assert (out / "add" / "config.pbtxt").is_file()


# --- http(s):// archives ---------------------------------------------------------------------


def zip_bytes(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def tar_with_link(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tf.addfile(info)
        tf.addfile(tarfile.TarInfo("1/"), None)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("double.tar.gz", double_model_archive()),  # one top-level folder: its content is the model
        ("double.tgz", double_model_archive()),
        ("flat.zip", zip_bytes({"config.pbtxt": 'name: "double"\n', "1/model.py": "# model"})),
        ("no-suffix", tar_gz({"config.pbtxt": 'name: "double"\n', "1/model.py": "# model"})),  # sniffed
    ],
)
def test_http_archives_are_unpacked(
    file_server: tuple[str, Path], tmp_path: Path, out: Path, filename: str, data: bytes
) -> None:
    base, www = file_server
    (www / filename).write_bytes(data)
    assert assemble_repository([planned("double", f"{base}/{filename}?token=x")], out, tmp_path, {}) == []
    assert (out / "double" / "config.pbtxt").is_file()
    assert (out / "double" / "1" / "model.py").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["double"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            tar_gz({"../evil.txt": "x", "1/model.py": ""}),
            "archive member '../evil.txt' leaves the model directory",
        ),
        (tar_gz({"/etc/evil": "x"}), "archive member '/etc/evil' leaves the model directory"),
        (zip_bytes({"1/../../evil": "x"}), "archive member '1/../../evil' leaves the model directory"),
        (tar_with_link("1/model.py", "/etc/passwd"), "unsafe archive"),
        (b"just some bytes", "not a .tar.gz, .tgz or .zip archive"),
    ],
)
def test_unsafe_or_unknown_archives_are_refused(
    file_server: tuple[str, Path], tmp_path: Path, out: Path, data: bytes, reason: str
) -> None:
    base, www = file_server
    (www / "model.tar.gz").write_bytes(data)
    source = f"{base}/model.tar.gz"
    errors = assemble_repository([planned("m", source)], out, tmp_path, {})
    assert [(e.model, e.source) for e in errors] == [("m", source)]
    assert errors[0].reason.startswith(reason)
    assert not (tmp_path / "evil.txt").exists()
    assert list(out.iterdir()) == []


def test_http_404_fails_at_once(file_server: tuple[str, Path], tmp_path: Path, out: Path) -> None:
    base, _ = file_server
    errors = assemble_repository([planned("m", f"{base}/nope.tar.gz")], out, tmp_path, {})
    assert [str(e) for e in errors] == [f"model 'm' from {base}/nope.tar.gz: HTTP 404 File not found"]


def test_unreachable_host_is_retried_then_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, out: Path
) -> None:
    from kubeforge.testing.triton import free_port

    monkeypatch.setattr(sources, "HTTP_RETRY_DELAYS_SECONDS", (0.01,))
    source = f"http://127.0.0.1:{free_port()}/m.tar.gz"
    errors = assemble_repository([planned("m", source)], out, tmp_path, {})
    assert len(errors) == 1
    assert errors[0].reason.startswith("download failed after 2 attempts: ")


def test_the_init_container_command_runs_the_program(pvc_root: Path, out: Path) -> None:
    """The exact command line the Deployment builder gives the init container."""
    env = dict(os.environ) | {PLAN_ENV: repository_plan([add_model_spec("add", "pvc://models/add")])}
    argv = ["kubeforge", "assemble-repository", "--out", str(out), "--pvc-root", str(pvc_root)]
    done = subprocess.run(
        [sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (out / "add" / "config.pbtxt").is_file()
