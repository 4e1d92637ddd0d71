"""One version: kubeforge.__version__ tags the images `make images` builds (hack/images.sh), and the
chart, the operator's defaults and the examples name exactly those images."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import yaml

from kubeforge import __version__
from kubeforge.settings import DEFAULT_OPERATOR_IMAGE

ROOT = Path(__file__).resolve().parents[1]


def _built_name(which: str) -> str:
    return subprocess.run(
        [str(ROOT / "hack" / "images.sh"), "name", which], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_package_takes_its_version_from_kubeforge() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kubeforge.__version__"}


def test_the_images_are_tagged_with_the_version() -> None:
    assert _built_name("operator") == f"ghcr.io/kubeforge/kubeforge-operator:{__version__}"
    assert _built_name("trainer") == f"ghcr.io/kubeforge/kubeforge-trainer:{__version__}"


def test_the_chart_and_the_operator_default_to_the_built_operator_image() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "kubeforge" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "kubeforge" / "values.yaml").read_text())
    assert chart["appVersion"] == __version__  # the default tag (values' image.tag is empty)
    assert values["image"]["tag"] == ""
    assert f"{values['image']['repository']}:{chart['appVersion']}" == _built_name("operator")
    assert _built_name("operator") == DEFAULT_OPERATOR_IMAGE  # the init container's image


def test_the_examples_train_with_the_built_trainer_image() -> None:
    images = {
        doc["spec"]["image"]
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "TrainingJob"
    }
    assert images == {_built_name("trainer")}
