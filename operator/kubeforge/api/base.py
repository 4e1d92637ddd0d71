"""Shared base classes and schema helpers for the API models.

Every model is camelCase on the wire and snake_case in Python. Cross-field rules are
declared once as `Rule`s: each becomes an `x-kubernetes-validations` CEL entry in the
CRD and is checked by the same model in Python, so `kubectl apply` and the operator
refuse the same specs with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from kubeforge.redact import CREDENTIAL_MARKERS, USERINFO_PATTERN, credential_in_url


@dataclass(frozen=True)
class Rule:
    """A cross-field validation rule, in CEL for the API server and in Python for us."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    @property
    def in_schema(self) -> bool:
        """Rules without CEL are checked in Python only (the schema enforces them another way)."""
        return bool(self.cel)

    def schema(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        rules = [r.schema() for r in cls.rules if r.in_schema]
        if rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = rules
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in self.rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    def wire(self) -> dict[str, Any]:
        """The object as it is on the wire: camelCase, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# A Kubernetes resource quantity ("500m", "16Gi", 2): int-or-string in the schema.
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be a non-negative quantity")
        return value
    if not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)")
    return value


Quantity = Annotated[
    str | int,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}],
        }
    ),
]

# A free-form Kubernetes object (affinity, a toleration, ...) kept as the user wrote it.
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

StringMap = Annotated[
    dict[str, str],
    WithJsonSchema({"type": "object", "additionalProperties": {"type": "string"}}),
]


# children are named after the object and its Service name must be a DNS-1035 label
NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


def object_name_rules(max_length: int, why: str) -> tuple[Rule, ...]:
    """The metadata.name rules of a kind, checked in Python; the CRD enforces them in its
    metadata.name schema (maxLength and pattern, see crd.py), so they carry no CEL."""
    return (
        Rule(
            cel="",
            message=f"metadata.name must be at most {max_length} characters ({why})",
            check=lambda o: len(o.metadata.name) <= max_length,
        ),
        Rule(
            cel="",
            message=f"metadata.name must start with a letter and hold only a-z, 0-9 and '-' ({why})",
            check=lambda o: re.match(NAME_PATTERN, o.metadata.name) is not None,
        ),
    )


def no_credential_rule(field: str, instead: str) -> Rule:
    """Refuse a URL in `field` that carries a credential: the object is readable by anyone with the
    built-in view role. `instead` says where the credential goes."""
    wire = to_camel(field)
    markers = " && ".join(f"!u.contains('{m}')" for m in CREDENTIAL_MARKERS)
    why = (
        f"{wire}: a credential in the URL is refused (user info, or a query parameter named *signature, "
        "*credential, *token, *key, *secret, *password, sig or GoogleAccessId: anyone who can read this "
        f"object could read it); {instead}"
    )
    return Rule(
        cel=f"[self.{wire}.lowerAscii()].all(u, !u.matches('{USERINFO_PATTERN}') && {markers})",
        message=why,
        check=lambda m: credential_in_url(getattr(m, field)) is None,
        field_path=f".{wire}",
    )
