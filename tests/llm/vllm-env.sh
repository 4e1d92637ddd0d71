#!/usr/bin/env bash
# Prints the path of a python that has the real vllm package, installing vllm first (once per
# machine) into its own virtual environment under $KUBEFORGE_CACHE/tools: vllm pins torch and some
# 170 packages of its own that must never meet the project's .venv (nor its runtime dependencies).
# tests/llm/vllm_check.py runs with this python and checks rendered model.json files with vLLM's
# own classes.
#
# Which vLLM: 0.15.1, the one in Triton's 26.02 vLLM container
# (nvcr.io/nvidia/tritonserver:26.02-vllm-python-py3, see docs/vllm-notes.md), and the newest
# vLLM whose torch pin (torch==2.9.1, as 0.14.0 to 0.16.0) is the torch this project already
# installs once per machine (hack/install-torch.sh). Triton 25.10's 0.10.2 pins torch 2.8.0:
# installing it would download a second CUDA torch (~6.7 GB) for a check that needs no GPU.
#
# How: a venv linked to that cached torch (hack/install-torch.sh writes the same .pth file as in
# the project's .venv), then `pip install vllm==$VLLM_VERSION` with vLLM's real dependency
# resolution: pip sees torch 2.9.1 installed and downloads everything else vLLM declares. Measured
# on a fresh cache (2 cores, pip's cache empty): 1 min 51 s, 3.5 GB in the venv (vllm itself 1.3 GB
# of compiled kernels; ray, cupy, cutlass, flashinfer ~1.2 GB) besides the shared torch (6.7 GB,
# there already). The trade-off taken: a `--no-deps` install of only the ~60 packages that the
# check imports would save about half of the venv, but would be a hand-kept list that a vLLM bump
# breaks silently; the full resolution is what a vLLM user gets, and `pip check` holds.
#
# usage: tests/llm/vllm-env.sh            -> /root/.cache/kubeforge/tools/vllm-venv/bin/python
#        VLLM_VERSION=0.16.0 tests/llm/vllm-env.sh   (a vLLM that pins torch 2.9.1)
set -euo pipefail

VLLM_VERSION=${VLLM_VERSION:-0.15.1}
# The torch that VLLM_VERSION pins (`pip download vllm==X --no-deps` and its METADATA say which).
VLLM_TORCH_VERSION=${VLLM_TORCH_VERSION:-2.9.1}
CACHE=${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}
export KUBEFORGE_CACHE=$CACHE
VENV="$CACHE/tools/vllm-venv"
STAMP="$VENV/.vllm.version"
WANT="vllm==$VLLM_VERSION torch==$VLLM_TORCH_VERSION"
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INSTALL_TORCH="$HERE/../../hack/install-torch.sh"

ready() { [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; }

if ready; then
  echo "$VENV/bin/python"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
# A lock, so that two test sessions starting together do not install into the same folder at once.
exec 9>"$VENV.lock"
flock 9
if ! ready; then
  echo "[vllm] installing vllm $VLLM_VERSION into $VENV (once per machine, ~2 min, ~3.5 GB)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # torch from the per-machine cache (installed there first if this machine has none yet)
  TORCH_VERSION=$VLLM_TORCH_VERSION "$INSTALL_TORCH" "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "vllm==$VLLM_VERSION" >&2
  # The stamp only once vllm imports and its pins hold: a broken install is redone next time.
  "$VENV/bin/pip" check >&2
  "$VENV/bin/python" -c "import vllm.engine.arg_utils" >&2
  echo "$WANT" >"$STAMP"
fi
echo "$VENV/bin/python"
