#!/usr/bin/env bash
# `make test`: every test, in timed phases checked against .ci/budgets.tsv.
#
# What needs no venv starts first, in the background: the Go parts the e2e tier runs (at low
# priority: a cold build is ~20 min of mostly CPU) and the unit tests' tool environments (checkov,
# vLLM: mostly downloads), while the venv is made and lint runs; the unit tests start once the tools
# are there, e2e once the Go parts are. Each phase's time is printed as it
# ends, then all of them in one table (also in .times/phases.tsv). A phase over 1.5x its budget
# fails the run under CI (CI=true) and is reported everywhere else; a failing phase stops the run
# at once, with the table of what ran.
set -uo pipefail
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
BUDGETS=.ci/budgets.tsv
TIMES=.times
E2E_PARTS=(${KUBEFORGE_E2E_PARTS:-kubernetes etcd kwok lws helm kueue kstatus netpol prometheus prometheus-adapter keda syft traefik})
mkdir -p "$TIMES"
: >"$TIMES/phases.tsv"
started=$SECONDS

minutes() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
budget() { awk -v p="$1" '$1 == p {print $2}' "$BUDGETS"; }

over=()
record() { # phase seconds
  local limit; limit=$(budget "$1")
  printf '%s\t%s\t%s\n' "$1" "$2" "$limit" >>"$TIMES/phases.tsv"
  if [ -z "$limit" ]; then
    echo "[phase] $1: $(minutes "$2") (no budget in $BUDGETS)"
  elif [ $(($2 * 2)) -gt $((limit * 3)) ]; then
    echo "[phase] $1: $(minutes "$2"), OVER 1.5x its budget of $(minutes "$limit") ($BUDGETS)"
    over+=("$1 took $(minutes "$2"), budget $(minutes "$limit"), allowed $(minutes $((limit * 3 / 2)))")
  else
    echo "[phase] $1: $(minutes "$2") (budget $(minutes "$limit"))"
  fi
}

summary() {
  echo
  echo "== make test: phases (seconds; budgets in $BUDGETS) =="
  awk -F'\t' '{printf "  %-15s %6s s   budget %s s\n", $1, $2, ($3 == "" ? "-" : $3)}' "$TIMES/phases.tsv"
  echo "  total           $((SECONDS - started)) s"
}

finish() { # exit status of the tests
  summary
  if [ "$1" = 0 ] && [ ${#over[@]} -gt 0 ]; then
    for line in "${over[@]}"; do echo "BUDGET EXCEEDED: $line"; done
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
      echo "FAILED: a phase ran over 1.5x its budget. Find what grew (.times/*.tsv lists every test's time),"
      echo "make it faster, or raise the budget in $BUDGETS with the measured reason."
      exit 1
    fi
    echo "(reported only: the budgets fail the run under CI=true)"
  fi
  exit "$1"
}

phase() { # name command...: runs it, records its time; a failure ends the run
  local name=$1 t=$SECONDS rc=0
  shift
  echo "[phase] $name: $*"
  "$@" || rc=$?
  record "$name" $((SECONDS - t))
  if [ "$rc" != 0 ]; then
    echo "[phase] $name FAILED (exit status $rc)"
    finish "$rc"
  fi
}

declare -A background_pids
background() { # name command...: a phase that runs beside the others; `await name` joins it
  local name=$1
  shift
  rm -f "$TIMES/$name.rc" "$TIMES/$name.seconds"
  echo "[phase] $name (in the background): $*"
  (
    t=$SECONDS
    "$@" >/dev/null
    echo $? >"$TIMES/$name.rc"
    echo $((SECONDS - t)) >"$TIMES/$name.seconds"
  ) &
  background_pids[$name]=$!
}

await() { # name what-failed-means: waits for a background phase, records it and the wait itself
  local name=$1 t=$SECONDS rc
  echo "[phase] $name-wait: waiting for $name"
  wait "${background_pids[$name]}"
  record "$name" "$(cat "$TIMES/$name.seconds")"
  record "$name-wait" $((SECONDS - t))
  rc=$(cat "$TIMES/$name.rc")
  if [ "$rc" != 0 ]; then
    echo "[phase] $name FAILED (exit status $rc): $2"
    finish "$rc"
  fi
}

# First what takes long and needs no venv: the Go parts of e2e (mostly CPU, so at low priority) and
# the tool environments of the unit tests (mostly downloads: checkov, and vLLM with its torch).
background go-builds nice -n 10 e2e/binaries.sh "${E2E_PARTS[@]}"
background tools bash -c 'tests/chart/checkov.sh && tests/llm/vllm-env.sh'

phase venv "$MAKE" --no-print-directory install torch
# The images the e2e tests run (hack/images.sh: buildah, their bases from Debian packages and the
# machine's torch, which the venv phase provides): beside lint and unit, at low priority.
background images nice -n 10 hack/images.sh build
phase lint "$MAKE" --no-print-directory lint
await tools "the [checkov] or [vllm] lines above say which; both scripts print pip's error"
phase unit "$MAKE" --no-print-directory test-unit
await go-builds "the [binaries] lines above name the part and its log"
await images "the [images] lines above name the image and its build log"
phase e2e "$MAKE" --no-print-directory test-e2e
phase e2e-netns "$MAKE" --no-print-directory test-e2e-netns
finish 0
