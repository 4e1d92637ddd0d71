"""Helpers for tests and benchmarks that run real components locally (never used by the operator)."""
