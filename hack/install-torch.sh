#!/usr/bin/env bash
# Installs PyPI's torch (a CUDA build: GBs with its nvidia-* wheels) once per machine into
# ~/.cache/kubeforge/torch-<version>-py<ver>-r<layout>/ and links it into the venv with a .pth file,
# so a fresh clone or a new venv never downloads it again.
#
# torch only: no numpy of its own. The venv's numpy (nvidia-pytriton pins numpy<2) comes first on
# sys.path and serves torch; a numpy 2 here would break that pin (pip's resolver ERROR, `pip check`).
set -euo pipefail
VENV=${1:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.9.1}
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
CACHE=${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}
# -r2: the layout revision (r2: without numpy); bump it when what goes in changes, so machines reinstall
TARGET="$CACHE/torch-$TORCH_VERSION-py$PYVER-r2"
if [ ! -f "$TARGET/.complete" ]; then
  # One installer at a time (make test installs the vLLM tool environment's torch, the same one,
  # beside the venv's); the one that waited finds it complete.
  mkdir -p "$CACHE"
  exec 9>"$TARGET.lock"
  flock 9
fi
if [ ! -f "$TARGET/.complete" ]; then
  echo "[torch] installing torch $TORCH_VERSION into $TARGET (once per machine)" >&2
  rm -rf "$TARGET.partial"
  "$VENV/bin/pip" install -q --no-warn-script-location --target "$TARGET.partial" "torch==$TORCH_VERSION"
  rm -rf "$TARGET" && mv "$TARGET.partial" "$TARGET" && touch "$TARGET/.complete"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$TARGET" >"$SITE/kubeforge-torch.pth"
