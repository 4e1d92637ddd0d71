#!/usr/bin/env bash
# The venv Triton's Python-backend stub runs in (run.sh calls this; README.md says why):
#
#   bash hack/gpu-check/stub-venv.sh PYTHON VENV WHEEL...
#
# The stub's embedded Python runs isolated (PYTHONPATH does not reach it) and takes its packages from
# the venv of the `python3` first on PATH. This venv has WHEEL... (numpy 1.26: Triton 2.51's backend
# misreads numpy 2 arrays) in its own site-packages, then PYTHON's site-packages (torch, ...) through
# a .pth file, so the wheels win and everything else is PYTHON's.
set -euo pipefail
py=$1
venv=$2
shift 2
rm -rf "$venv"
if ! "$py" -m venv --without-pip "$venv"; then
  # a distribution's python without its venv package: the same layout by hand
  rm -rf "$venv"
  "$py" - "$venv" <<'PY'
import sys
from pathlib import Path

venv, base = Path(sys.argv[1]), Path(sys._base_executable)
version = f"{sys.version_info.major}.{sys.version_info.minor}"
(venv / "lib" / f"python{version}" / "site-packages").mkdir(parents=True, exist_ok=True)
(venv / "bin").mkdir(exist_ok=True)
for name in ("python", "python3", f"python{version}"):
    (venv / "bin" / name).symlink_to(base)
(venv / "pyvenv.cfg").write_text(
    f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n"
)
PY
fi
site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"
"$py" -c 'import site; print("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages()))' \
  >"$site/zz-gpu-check-parent-site.pth"
echo "stub venv $venv: ${*##*/}, then: $(cat "$site/zz-gpu-check-parent-site.pth")"
