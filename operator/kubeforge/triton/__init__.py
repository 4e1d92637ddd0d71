"""Triton Inference Server: config.pbtxt rendering, model repository assembly, readiness checks.

- `config`: the pure rendering of a model's `config.pbtxt` from its spec.
- `repository`: the plan the operator hands to the init container, and the init container's
  program (`kubeforge assemble-repository`) that lays out the repository Triton loads;
  `sources` and `objectstore` fetch the models it names (pvc://, http(s)://, s3://, gs://).
- `client`: what the status code reads from a running server (repository index, readiness).
"""
