"""The reference models: loadable by ``module:Class``, and each learns the synthetic task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubeforge.trainer.data import synthetic_classification
from kubeforge.trainer.models import MLP, SmallCNN, build_model, model_signature
from tests.trainer.runs import run, single_process_argv

pytestmark = pytest.mark.torch


@pytest.mark.parametrize(
    ("spec", "cls", "input_shape"),
    [
        ("kubeforge.trainer.models:MLP", MLP, (16,)),
        ("kubeforge.trainer.models:SmallCNN", SmallCNN, (1, 8, 8)),
    ],
)
def test_model_spec_builds_the_class(spec: str, cls: type, input_shape: tuple[int, ...]) -> None:
    model = build_model(spec)
    assert isinstance(model, cls)
    assert model_signature(model) == (input_shape, 4)
    assert model(torch.zeros(3, *input_shape)).shape == (3, 4)


def test_synthetic_dataset_is_a_function_of_its_seed() -> None:
    a, b = (
        synthetic_classification(64, (1, 8, 8), 4, seed=5),
        synthetic_classification(64, (1, 8, 8), 4, seed=5),
    )
    assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))
    assert not torch.equal(a.tensors[0], synthetic_classification(64, (1, 8, 8), 4, seed=6).tensors[0])
    assert set(a.tensors[1].tolist()) <= {0, 1, 2, 3}


def test_small_cnn_learns_and_exports(tmp_path: Path) -> None:
    args = [
        "--model",
        "kubeforge.trainer.models:SmallCNN",
        "--steps",
        "40",
        "--batch-size",
        "32",
        "--lr",
        "0.1",
    ]
    result = run(
        single_process_argv(
            [*args, "--dataset-size", "512", "--log-every", "1", "--output-uri", str(tmp_path)]
        ),
        tmp_path / "train.log",
    )
    assert result.returncode == 0, result.output
    losses = result.losses()
    assert sum(losses[s] for s in range(36, 41)) < 0.5 * sum(losses[s] for s in range(1, 6)), losses
    # no --model-name: the class name, lower-cased
    assert (tmp_path / "smallcnn" / "config.pbtxt").is_file()
    assert (tmp_path / "smallcnn" / "1" / "model.pt").is_file()
