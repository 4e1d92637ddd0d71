#!/usr/bin/env bash
# Runs a command in a network namespace of its own, with only its loopback, up: what the Gateway
# e2e tests run in (`make test-e2e-netns`). There each simulated pod's IP (from its node's podCIDR)
# is added to that loopback and the pod's tritonserver binds it (e2e/netns.py), so a real gateway
# and Prometheus reach pods at the addresses in their EndpointSlices. No address is ever added to
# the host's interfaces: the namespace, and everything in it, ends with the command.
#
# usage: hack/netns.sh command [arg ...]
set -euo pipefail
if [ "${1:-}" = --inside ]; then
  shift
  ip link set lo up
  exec "$@"
fi
for tool in unshare ip; do
  command -v "$tool" >/dev/null || { echo "hack/netns.sh: $tool is missing (util-linux, iproute2)" >&2; exit 1; }
done
# the namespace it came from, which e2e/netns.py checks it is not in
KUBEFORGE_E2E_NETNS=$(readlink /proc/self/ns/net)
export KUBEFORGE_E2E_NETNS
if [ "$(id -u)" = 0 ]; then
  exec unshare --net -- "$0" --inside "$@"
fi
exec unshare --user --map-root-user --net -- "$0" --inside "$@"
