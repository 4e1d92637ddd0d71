#!/usr/bin/env bash
# Kubeforge's GPU check (README.md beside this file): the trainer with NCCL on CUDA, Triton with GPU
# instances serving what it exported, the OpenAI front over it. From the repository root:
#
#   bash hack/gpu-check/run.sh OUT_DIR
#
# OUT_DIR gets log.txt (everything printed), summary.json, nvidia-smi.txt, trainer.log,
# tritonserver.log and openai-front.log. Exit status 0 when every check passed.
# Environment: GPU_CHECK_ALLOW_CPU=1 (dry run without CUDA: gloo, KIND_CPU), GPU_CHECK_PYTHON
# (default python3), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE (default /tmp/site),
# GPU_CHECK_STUB_VENV (default /tmp/stub-venv), GPU_CHECK_SKIP_INSTALL=1, GPU_CHECK_MLP_STEPS (200),
# GPU_CHECK_LM_STEPS (300), GPU_CHECK_BUDGET (420 s: no check starts after it).
set -euo pipefail
out=${1:?usage: bash hack/gpu-check/run.sh OUT_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/summary.json"
exec > >(tee "$out/log.txt") 2>&1

py=${GPU_CHECK_PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/site}
stub_venv=${GPU_CHECK_STUB_VENV:-/tmp/stub-venv}
wheels=${GPU_CHECK_WHEELS:-$root/.whl}
work=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
budget=${GPU_CHECK_BUDGET:-420}
started=$SECONDS
# whatever stops this script, summary.json says so
trap '[ -s "$out/summary.json" ] || printf "{\"overall\": \"FAIL\", \"error\": \"run.sh stopped before check.py wrote a summary: see log.txt\"}\n" >"$out/summary.json"' EXIT

echo "== kubeforge GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "python: $(command -v "$py") = $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

if [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]; then
  shopt -s nullglob
  whls=("$wheels"/*.whl)
  shopt -u nullglob
  [ ${#whls[@]} -gt 0 ] || { echo "FAIL: no wheels in $wheels (bash hack/gpu-check/fetch-wheels.sh)"; exit 2; }
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${whls[@]}"
  echo "installed ${#whls[@]} wheels into $site in $((SECONDS - started)) s"
  # the venv Triton's Python-backend stub runs in: numpy 1.x first (stub-venv.sh says why)
  shopt -s nullglob
  stub_whls=("$wheels"/stub/*.whl)
  shopt -u nullglob
  if [ ${#stub_whls[@]} -gt 0 ]; then
    bash "$root/hack/gpu-check/stub-venv.sh" "$py" "$stub_venv" "${stub_whls[@]}" ||
      echo "WARNING: no stub venv: the stub imports $py's own packages (numpy 2 breaks Triton 2.51's backend)"
  fi
fi
if [ -x "$stub_venv/bin/python3" ]; then export GPU_CHECK_STUB_VENV="$stub_venv"; else unset GPU_CHECK_STUB_VENV; fi
export PYTHONPATH="$site:$root/operator${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 KUBEFORGE_CACHE="$work/cache"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt" || true
else
  echo "nvidia-smi: not installed" | tee "$out/nvidia-smi.txt"
fi

args=(--out "$out" --work "$work" --budget "$budget"
  --mlp-steps "${GPU_CHECK_MLP_STEPS:-200}" --lm-steps "${GPU_CHECK_LM_STEPS:-300}")
[ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] && args+=(--allow-cpu)
rc=0
timeout -k 15 $((budget + 60)) "$py" "$root/hack/gpu-check/check.py" "${args[@]}" || rc=$?

# what this run started and left behind (tritonserver runs in a session of its own): by pid
for cmdline in /proc/[0-9]*/cmdline; do
  pid=${cmdline#/proc/}; pid=${pid%/cmdline}
  argv0=$( (tr '\0' '\n' <"$cmdline") 2>/dev/null | head -n1) || continue
  case "$argv0" in
    "$site"/pytriton/tritonserver/bin/tritonserver | "$work"/cache/*)
      echo "stopping leftover pid $pid ($argv0)"; kill -9 "$pid" 2>/dev/null || true ;;
  esac
done
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee -a "$out/nvidia-smi.txt" || true
fi
echo "== exit $rc after $((SECONDS - started)) s; results in $out: $(cd "$out" && ls | tr '\n' ' ')"
exit $rc
