"""Benchmarks of the operator against the local real control plane (`make bench`)."""
