"""Quantities are written as the API server stores them (else every resync would write)."""

from __future__ import annotations

import pytest

from kubeforge.builders.quantity import canonical_quantity


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("50000", "50k"), ("200", "200"), ("1000", "1k"), ("1500", "1500"), ("0.5", "500m"),
        ("1.5", "1500m"), ("1000m", "1"), ("4", "4"), (2, "2"), ("16Gi", "16Gi"), ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"), ("2000Mi", "2000Mi"), ("100m", "100m"), ("500M", "500M"), ("0", "0"), ("1e3", "1e3"),
    ],
)  # fmt: skip
def test_canonical_quantity(given: str | int, canonical: str) -> None:
    assert canonical_quantity(given) == canonical
