"""Kubernetes resource quantities in the API server's canonical form.

The API server stores "1024Mi" as "1Gi" and "50000" as "50k"; writing the canonical form
ourselves is what lets a semantic comparison with the live object hold, so an unchanged child
costs no write. Mirrors k8s.io/apimachinery/pkg/api/resource Quantity.String() for the values
a spec uses (integers of the binary suffixes, decimal values down to milli-units).
"""

from __future__ import annotations

import re
from decimal import Decimal

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_PATTERN = re.compile(r"^([+]?[0-9]*\.?[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE])?$")


def canonical_quantity(value: str | int) -> str:
    """The canonical string of a quantity; a value it cannot parse is returned as it is."""
    match = _PATTERN.match(str(value).strip())
    if not match:
        return str(value)
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        amount = number * (Decimal(1024) ** _BINARY[suffix])
        if amount == amount.to_integral_value():
            return _binary(int(amount))
        return _decimal(amount)
    if suffix[:1] in ("e", "E"):
        return str(value)  # the API server keeps the exponent notation as written
    return _decimal(number.scaleb(_DECIMAL[suffix]))


def _binary(amount: int) -> str:
    if amount == 0:
        return "0"
    for suffix, power in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        unit = 1024**power
        if amount % unit == 0:
            return f"{amount // unit}{suffix}"
    # below 1Ki the API server writes plain decimal
    return _decimal(Decimal(amount))


def _decimal(amount: Decimal) -> str:
    if amount == 0:
        return "0"
    # round up to milli-units as the API server does for CPU-like values
    milli = (amount * 1000).to_integral_value(rounding="ROUND_CEILING")
    exponent = -3
    while milli % 1000 == 0 and exponent < 18:
        milli //= 1000
        exponent += 3
    return f"{int(milli)}{_DECIMAL_SUFFIX[exponent]}"
