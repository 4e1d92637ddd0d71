"""The local real cluster and the end-to-end tests of kubeforge.

`e2e.cluster` runs a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) on loopback, with kwok simulating GPU nodes and pod lifecycles
(`e2e/kwok/`); `python -m e2e.dev up|down` is the developer cluster behind `make dev`;
the `test_*.py` modules are the end-to-end tests run by `make test-e2e`.
"""
