"""The harness policy for every run, tests/ and e2e/ alike: see tests/harness.py."""

pytest_plugins = ["tests.harness"]
