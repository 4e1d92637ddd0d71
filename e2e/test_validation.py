"""Every invalid spec of the foundation's table is refused by the real API server, naming the field."""

from __future__ import annotations

import json

import pytest

from e2e.kube import Kubectl
from tests.data.invalid_specs import INVALID_SPECS, InvalidSpec

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda c: c.id)
def test_kubectl_apply_refuses_invalid_spec(kubectl: Kubectl, case: InvalidSpec) -> None:
    body = case.body()
    body["metadata"]["namespace"] = "default"
    result = kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert case.expect in result.stderr, result.stderr


def test_valid_examples_are_accepted_by_dry_run(kubectl: Kubectl) -> None:
    result = kubectl("apply", "--dry-run=server", "-f", "examples/", check=False)
    assert result.returncode == 0, result.stderr
