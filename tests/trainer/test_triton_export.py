"""The exported Triton model: config.pbtxt is a valid ModelConfig that matches the model, and the
TorchScript file computes what the trained model computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kubeforge.trainer import triton_model
from kubeforge.trainer.checkpoint import load_checkpoint
from kubeforge.trainer.export import export_triton_model
from kubeforge.trainer.models import MLP, SmallCNN, parameter_digest
from kubeforge.trainer.storage import UnsupportedOutputError, resolve_output_path
from tests.trainer.runs import MODEL_NAME, TOTAL_STEPS, ReferenceRun

pytestmark = pytest.mark.torch

FP32 = model_config_pb2.DataType.TYPE_FP32


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    return config


def trained_model(reference_run: ReferenceRun) -> MLP:
    model = MLP()
    state = load_checkpoint(reference_run.checkpoint_dir / f"ckpt-{TOTAL_STEPS:08d}.pt")
    model.load_state_dict(state["model"])
    return model.eval()


def test_final_checkpoint_holds_the_trained_parameters(reference_run: ReferenceRun) -> None:
    assert parameter_digest(trained_model(reference_run)) == reference_run.run.digests()[0]


def test_python_flavour_config_matches_the_model(reference_run: ReferenceRun) -> None:
    config = parse_config(reference_run.model_dir)
    assert config.name == MODEL_NAME
    assert config.backend == "python"
    assert config.platform == ""
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("INPUT__0", FP32, [16])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("OUTPUT__0", FP32, [4])]


def test_python_flavour_version_directory(reference_run: ReferenceRun) -> None:
    version_dir = reference_run.model_dir / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.pt", "model.py"]
    assert (version_dir / "model.py").read_bytes() == Path(triton_model.__file__).read_bytes()


def test_torchscript_reloads_and_matches_the_trained_model(reference_run: ReferenceRun) -> None:
    scripted = torch.jit.load(str(reference_run.model_dir / "1" / "model.pt"))
    batch = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))  # traced with 2: batch is dynamic
    with torch.no_grad():
        expected = trained_model(reference_run)(batch)
        actual = scripted(batch)
    assert actual.shape == (5, 4)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_pytorch_flavour_targets_the_libtorch_backend(tmp_path: Path, reference_run: ReferenceRun) -> None:
    model = trained_model(reference_run)
    model_dir = export_triton_model(model, torch.randn(2, 16), tmp_path, "mlp-libtorch", "pytorch", 8)
    config = parse_config(model_dir)
    assert (config.name, config.platform, config.backend) == ("mlp-libtorch", "pytorch_libtorch", "pytorch")
    assert config.max_batch_size == 8
    assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT__0", [16])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("OUTPUT__0", [4])]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.pt"]


def test_switching_flavour_removes_the_python_wrapper(tmp_path: Path) -> None:
    model, example = MLP(), torch.randn(2, 16)
    export_triton_model(model, example, tmp_path, "m", "python", 8)
    model_dir = export_triton_model(model, example, tmp_path, "m", "pytorch", 8)
    assert not (model_dir / "1" / "model.py").exists()
    assert parse_config(model_dir).platform == "pytorch_libtorch"


def test_image_model_dims_exclude_the_batch(tmp_path: Path) -> None:
    model_dir = export_triton_model(SmallCNN(), torch.randn(2, 1, 8, 8), tmp_path, "cnn", "python", 16)
    config = parse_config(model_dir)
    assert [list(t.dims) for t in config.input] == [[1, 8, 8]]
    assert [list(t.dims) for t in config.output] == [[4]]


def test_model_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model name"):
        export_triton_model(MLP(), torch.randn(2, 16), tmp_path, "../escape", "python", 8)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/models/repo", "/models/repo"),
        ("file:///models/repo", "/models/repo"),
        ("pvc://models/mnist", "/mnt/pvc/models/mnist"),
        ("pvc://models", "/mnt/pvc/models"),
    ],
)
def test_output_uris_resolve_to_local_paths(uri: str, expected: str) -> None:
    assert resolve_output_path(uri, Path("/mnt/pvc")) == Path(expected)


@pytest.mark.parametrize(
    "uri", ["s3://bucket/models", "gs://bucket/models", "pvc:///no-claim", "pvc://c/../x"]
)
def test_unwritable_output_uris_are_refused(uri: str) -> None:
    with pytest.raises(UnsupportedOutputError):
        resolve_output_path(uri, Path("/mnt/pvc"))
