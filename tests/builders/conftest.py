from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.settings import Settings
from tests.data.invalid_specs import example


def _with_meta(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"].update(uid="0000-uid", generation=3, namespace="team-a")
    return doc


@pytest.fixture
def md_body() -> dict[str, Any]:
    return _with_meta(example("model-deployment.yaml"))


@pytest.fixture
def md(md_body: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate(md_body)


@pytest.fixture
def tj_body() -> dict[str, Any]:
    return _with_meta(example("training-job.yaml"))


@pytest.fixture
def tj(tj_body: dict[str, Any]) -> TrainingJob:
    return TrainingJob.model_validate(tj_body)


@pytest.fixture
def settings() -> Settings:
    return Settings(triton_image="triton:test", helper_image="kubeforge:test")
