"""The CRDs are generated, structural, described, and committed up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeforge.api.crd import KINDS, openapi_schema
from kubeforge.generate import generated_files

ROOT = Path(__file__).resolve().parents[2]


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("path", sorted(generated_files(ROOT)), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_file_is_up_to_date(path: Path) -> None:
    expected = generated_files(ROOT)[path]
    assert path.exists(), f"{path} is missing: run `make manifests`"
    assert path.read_text() == expected, f"{path.relative_to(ROOT)} is stale: run `make manifests`"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    schema = openapi_schema(kind)
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "$defs" not in node, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            # the only anyOf the API server allows beside value validations: int-or-string
            assert node.get("x-kubernetes-int-or-string") is True, path
        if "properties" in node or "items" in node:
            assert node.get("type") in ("object", "array"), path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_spec_and_status_field_has_a_description(kind: Any) -> None:
    schema = openapi_schema(kind)
    missing = []
    for part in ("spec", "status"):
        for path, node in _walk(schema["properties"][part], part):
            for name, child in node.get("properties", {}).items():
                if not child.get("description"):
                    missing.append(f"{path}.{name}")
    assert not missing


def test_model_deployment_crd_has_scale_status_printer_columns_and_names() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.kubeforge.io.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Ready",
        "Model",
        "GPU",
        "Rollout",
        "Age",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["md"]
    assert crd["spec"]["names"]["categories"] == ["kubeforge", "ai"]


def test_training_job_crd_printer_columns() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainingjobs.kubeforge.io.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Workers", "Restarts", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["tj"]


def test_cross_field_rules_are_in_the_schema() -> None:
    schema = openapi_schema(KINDS[0])
    rules = [r["message"] for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])]
    assert "autoscaling.minReplicas must be <= autoscaling.maxReplicas" in rules
    assert "gpu.count and gpu.mig are mutually exclusive: ask for whole GPUs or one MIG slice" in rules
    name = schema["properties"]["metadata"]["properties"]["name"]
    assert (name["maxLength"], name["pattern"]) == (63, "^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_quantities_are_int_or_string() -> None:
    spec = openapi_schema(KINDS[0])["properties"]["spec"]["properties"]
    assert spec["shmSize"]["x-kubernetes-int-or-string"] is True
    assert spec["resources"]["properties"]["memory"]["x-kubernetes-int-or-string"] is True


def test_free_form_affinity_preserves_unknown_fields_and_nothing_else_does() -> None:
    schema = openapi_schema(KINDS[0])
    preserved = [p for p, node in _walk(schema) if node.get("x-kubernetes-preserve-unknown-fields")]
    assert all(p.endswith((".affinity", ".valueFrom", ".engineArgs")) for p in preserved), preserved
