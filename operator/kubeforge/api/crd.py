"""Generate structural apiextensions.k8s.io/v1 CRDs (and the API reference) from the pydantic models.

pydantic emits JSON Schema with `$ref`s, `anyOf: [X, null]` for optionals and titles;
a CRD needs a structural OpenAPI v3 schema: everything inlined, `nullable` instead of
null branches, no `additionalProperties: false`. This module does that translation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from kubeforge import GROUP, VERSION
from kubeforge.api.base import NAME_PATTERN, ApiModel
from kubeforge.api.modeldeployment import MAX_NAME_LENGTH as MD_MAX_NAME
from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.api.trainingjob import MAX_NAME_LENGTH as TJ_MAX_NAME
from kubeforge.api.trainingjob import TrainingJob

CATEGORIES = ["kubeforge", "ai"]
_DROP = {"title", "additionalProperties"}


@dataclass(frozen=True)
class Kind:
    """What a CRD needs beyond the schema."""

    model: type[ApiModel]
    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, str], ...]
    max_name_length: int = 253
    scale: bool = False

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def filename(self) -> str:
        return f"{self.name}.yaml"


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
KINDS = (
    Kind(
        model=ModelDeployment,
        kind="ModelDeployment",
        plural="modeldeployments",
        short_names=("md",),
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
            {"name": "Model", "type": "string", "jsonPath": ".status.model"},
            {"name": "GPU", "type": "string", "jsonPath": ".status.gpu"},
            {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.summary"},
            _AGE,
        ),
        max_name_length=MD_MAX_NAME,
        scale=True,
    ),
    Kind(
        model=TrainingJob,
        kind="TrainingJob",
        plural="trainingjobs",
        short_names=("tj",),
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Workers", "type": "string", "jsonPath": ".status.workers"},
            {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
            _AGE,
        ),
        max_name_length=TJ_MAX_NAME,
    ),
)


def _is_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null"


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s and rewrite one JSON-Schema node into a structural OpenAPI v3 node."""
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the referring property's description wins
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if not _is_null(b)]
        nullable = len(branches) != len(node["anyOf"])
        if len(branches) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            inner = structural(branches[0], defs)
            node = {**inner, **{k: v for k, v in rest.items() if k not in ("default",) or v is not None}}
        else:
            node["anyOf"] = [structural(b, defs) for b in branches]
        if nullable:
            node["nullable"] = True
    if node.get("x-kubernetes-int-or-string"):
        # int-or-string: the API server allows exactly anyOf[integer, string]; keep patterns outside it
        patterns = [b.get("pattern") for b in node.get("anyOf", []) if b.get("pattern")]
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if patterns:
            node["pattern"] = patterns[0]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            # JSON Schema 2020-12 gives the bound; OpenAPI v3.0 (the CRD schema) a flag on it
            node[inclusive] = node[bound]
            node[bound] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("default") is None:
        node.pop("default", None)
    for key in _DROP:
        if key == "additionalProperties" and isinstance(node.get(key), dict):
            continue  # a typed map (string -> string) keeps its value schema
        node.pop(key, None)
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    return node


def openapi_schema(kind: Kind) -> dict[str, Any]:
    """The structural schema of one kind, with the root's metadata kept as a plain object."""
    raw = kind.model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    root = structural(raw, defs)
    root["properties"]["metadata"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": kind.max_name_length, "pattern": NAME_PATTERN}
        },
    }
    root["properties"]["apiVersion"] = {"type": "string", "description": "API version of the object."}
    root["properties"]["kind"] = {"type": "string", "description": "Kind of the object."}
    root["required"] = ["spec"]
    return root


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.name,
            "labels": {"app.kubernetes.io/name": "kubeforge", "app.kubernetes.io/part-of": "kubeforge"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    "subresources": subresources,
                    "additionalPrinterColumns": list(kind.printer_columns),
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors/aliases for repeated enums."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


HEADER = "# Generated by `make manifests` from operator/kubeforge/api; do not edit.\n"


def render_crd(kind: Kind) -> str:
    return HEADER + yaml.dump(crd(kind), Dumper=_Dumper, sort_keys=False, width=120)


def rendered_crds() -> dict[str, str]:
    """File name -> YAML of every CRD."""
    return {kind.filename: render_crd(kind) for kind in KINDS}


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string (quantity)"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if node.get("type") == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    return str(node.get("type", "object"))


def render_api_reference() -> str:
    """docs/api.md: every field with its type, default and description."""
    out = [
        "# Kubeforge API reference (kubeforge.io/v1alpha1)",
        "",
        "Generated by `make manifests` from `operator/kubeforge/api`; do not edit.",
    ]
    for kind in KINDS:
        schema = openapi_schema(kind)
        out += [
            "",
            f"## {kind.kind}",
            "",
            f"Short names: {', '.join(kind.short_names)}. Categories: {', '.join(CATEGORIES)}.",
            "",
        ]
        for rule in schema.get("x-kubernetes-validations", []):
            out.append(f"- Rule: {rule['message']}")
        for part in ("spec", "status"):
            out += [
                "",
                f"### {kind.kind}.{part}",
                "",
                "| field | type | default | description |",
                "|---|---|---|---|",
            ]
            for path, node in _walk(schema["properties"][part], part):
                default = f"`{node['default']}`" if "default" in node else ""
                desc = node.get("description", "").replace("\n", " ").replace("|", "\\|")
                for rule in node.get("x-kubernetes-validations", []):
                    desc += f" Rule: {rule['message']}."
                out.append(f"| `{path}` | {_type_of(node)} | {default} | {desc} |")
    return "\n".join(out) + "\n"
