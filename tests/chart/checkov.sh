#!/usr/bin/env bash
# Prints the path of a checkov executable, installing checkov first (once per machine) into its own
# virtual environment under $KUBEFORGE_CACHE/tools: it pins many packages of its own that must not
# meet the project's .venv.
#
# usage: tests/chart/checkov.sh            -> /root/.cache/kubeforge/tools/checkov-venv/bin/checkov
#        CHECKOV_VERSION=3.3.x tests/chart/checkov.sh
set -euo pipefail

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
CACHE=${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}
VENV="$CACHE/tools/checkov-venv"
STAMP="$VENV/.checkov.version"
PYTHON=${PYTHON:-python3}

if [ -x "$VENV/bin/checkov" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
  echo "$VENV/bin/checkov"
  exit 0
fi
echo "[checkov] installing checkov $CHECKOV_VERSION into $VENV (once per machine)" >&2
mkdir -p "$(dirname "$VENV")"
# A lock, so that two test sessions starting together do not install into the same folder at once.
exec 9>"$VENV.lock"
flock 9
if ! { [ -x "$VENV/bin/checkov" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$CHECKOV_VERSION" ]; }; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  echo "$CHECKOV_VERSION" >"$STAMP"
fi
echo "$VENV/bin/checkov"
