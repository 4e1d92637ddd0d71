"""kopf glue: watch events enqueue keys; reconcilers load the spec, call the builders, apply, fold status."""
