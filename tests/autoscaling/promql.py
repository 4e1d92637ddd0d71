"""A small PromQL evaluator over scraped samples, to check the queries Kubeforge generates.

It covers what the generated queries use: selectors with label matchers (`__name__` too), rate()
over a range, sum/avg by labels, clamp_min, arithmetic between vectors matched on their labels,
and `or`. rate()
is computed between two scrapes (the window the test controls), not over the query's [1m].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import promql_parser

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str, extra: dict[str, str]) -> dict[str, Vector]:
    """Prometheus text format -> metric name -> series; `extra` labels are what a scrape adds (pod, namespace)."""
    out: dict[str, Vector] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, _, labels, value = match.groups()
        pairs = dict(_LABEL.findall(labels or ""))
        pairs.update(extra)
        out.setdefault(name, {})[frozenset(pairs.items())] = float(value)
    return out


@dataclass(frozen=True)
class Scrapes:
    """Two scrapes of the same targets, `seconds` apart."""

    before: dict[str, Vector]
    after: dict[str, Vector]
    seconds: float


def _matches(labels: Labels, matchers: Any) -> bool:
    values = dict(labels)
    for m in matchers.matchers:
        op, have = str(m.op), values.get(m.name, "")
        if ("Equal" in op and "Not" not in op and have != m.value) or ("NotEqual" in op and have == m.value):
            return False
        if "Re" in op:
            hit = re.fullmatch(m.value, have) is not None
            if ("NotRe" in op and hit) or ("NotRe" not in op and not hit):
                return False
    return True


def _select(samples: dict[str, Vector], selector: Any) -> Vector:
    """The samples a selector picks: by its metric name, or by a `__name__` matcher over all names.

    Series of different names that share their other labels are added up (the generated queries
    only ever sum them).
    """
    out: Vector = {}
    for name, vector in samples.items():
        if selector.name and name != selector.name:
            continue
        for labels, value in vector.items():
            if _matches(labels | {("__name__", name)}, selector.matchers):
                out[labels] = out.get(labels, 0.0) + value
    return out


def _group(vector: Vector, by: list[str], op: str) -> Vector:
    groups: dict[Labels, list[float]] = {}
    for labels, value in vector.items():
        key = frozenset((k, v) for k, v in labels if k in by)
        groups.setdefault(key, []).append(value)
    if op == "sum":
        return {k: sum(v) for k, v in groups.items()}
    if op == "avg":
        return {k: sum(v) / len(v) for k, v in groups.items()}
    raise NotImplementedError(op)


def evaluate(query: str, data: Scrapes) -> Vector:
    return _eval(promql_parser.parse(query), data)


def _eval(node: Any, data: Scrapes) -> Vector:
    kind = type(node).__name__
    if kind == "NumberLiteral":
        return {frozenset(): float(node.val)}
    if kind == "VectorSelector":
        return _select(data.after, node)
    if kind == "ParenExpr":
        return _eval(node.expr, data)
    if kind == "Call" and node.func.name == "rate":
        selector = node.args[0].vector_selector
        before, after = _select(data.before, selector), _select(data.after, selector)
        return {k: max(0.0, v - before.get(k, 0.0)) / data.seconds for k, v in after.items()}
    if kind == "Call" and node.func.name == "clamp_min":
        vector, floor = _eval(node.args[0], data), float(node.args[1].val)
        return {k: max(v, floor) for k, v in vector.items()}
    if kind == "AggregateExpr":
        op = str(node.op).split()[0].lower()
        return _group(_eval(node.expr, data), list(node.modifier.labels) if node.modifier else [], op)
    if kind == "BinaryExpr" and str(node.op).strip() == "or":
        lhs, rhs = _eval(node.lhs, data), _eval(node.rhs, data)
        return {**{k: v for k, v in rhs.items() if k not in lhs}, **lhs}
    if kind == "BinaryExpr":
        lhs, rhs = _eval(node.lhs, data), _eval(node.rhs, data)
        apply = {"/": lambda a, b: a / b if b else float("nan"), "*": lambda a, b: a * b,
                 "+": lambda a, b: a + b, "-": lambda a, b: a - b}[str(node.op).strip()]  # fmt: skip
        if frozenset() in rhs and len(rhs) == 1:
            return {k: apply(v, rhs[frozenset()]) for k, v in lhs.items()}
        return {k: apply(v, rhs[k]) for k, v in lhs.items() if k in rhs}
    raise NotImplementedError(f"{kind}: {node}")
