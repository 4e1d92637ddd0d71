#!/usr/bin/env bash
# Times `make dev` or `make test` as a newcomer on a bare machine meets them: a fresh clone of HEAD
# and every cache empty (Go build and module caches, ~/.cache/kubeforge with torch and the binaries,
# pip's cache), all of them under one scratch folder, so the machine's own caches are neither used
# nor touched. Prints the wall time and the phase lines; the whole log stays in the scratch folder.
#
# usage: bench/cold.sh dev|test [scratch folder, default: a new /tmp/kubeforge-cold.XXXX]
set -euo pipefail
target=${1:?usage: bench/cold.sh dev|test [scratch]}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
scratch=${2:-$(mktemp -d /tmp/kubeforge-cold.XXXX)}
mkdir -p "$scratch"
git clone -q "$repo" "$scratch/repo"
export GOCACHE="$scratch/gocache" GOMODCACHE="$scratch/gomod" PIP_NO_CACHE_DIR=1
echo "[cold] make $target in $scratch/repo at $(git -C "$scratch/repo" rev-parse --short HEAD), caches under $scratch"
started=$(date +%s)
rc=0
# CACHE: the Makefile's KUBEFORGE_CACHE (torch, the Go binaries, the tool environments)
(cd "$scratch/repo" && make "$target" CACHE="$scratch/kubeforge") >"$scratch/make-$target.log" 2>&1 || rc=$?
seconds=$(($(date +%s) - started))
grep -E '^\[(phase|binaries|venv|torch)\]|passed|failed|reached their goal' "$scratch/make-$target.log" || true
echo "[cold] make $target: exit status $rc in $((seconds / 60))m$((seconds % 60))s; log: $scratch/make-$target.log"
if [ "$target" = dev ]; then (cd "$scratch/repo" && make dev-down >/dev/null 2>&1) || true; fi
exit "$rc"
