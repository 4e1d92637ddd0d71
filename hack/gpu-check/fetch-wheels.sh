#!/usr/bin/env bash
# Download the wheels the GPU check needs on a machine without network, into DEST (default .whl).
#
#   bash hack/gpu-check/fetch-wheels.sh [PYTHON_X.Y (default 3.12)] [DEST (default .whl)]
#
# The versions are the project venv's (.venv, `make install`). Only what the device's python3
# (torch, numpy, jinja2, ... ) lacks and Kubeforge's code paths under check import:
#   pydantic stack    kubeforge.api / kubeforge.triton.config (the trainer's exporter imports them)
#   aiohttp stack     kubeforge.openai.front (`python -m kubeforge openai-front`)
#   prometheus_client kubeforge.testing.streaming (reads the model's own metrics)
#   nvidia-pytriton   the real tritonserver and the Python backend's stub, trimmed to one Python
#                     version and LZMA-recompressed (repack_wheel.py: 55 MB -> 27 MB)
#   stub/numpy 1.26   for the stub's path only (run.sh installs it apart): Triton 2.51's Python backend
#                     misreads numpy 2 arrays (wrong output sizes, garbage BYTES tensors), and
#                     nvidia-pytriton requires numpy<2; the device's python3 has numpy 2
# tritonclient (and its gevent/grpc dependencies) is left out: the check talks KServe-v2 HTTP/JSON.
set -euo pipefail
pyver=${1:-3.12}
dest=${2:-.whl}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dest"
platforms=()
for p in manylinux_2_35_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$p")
done
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp "${platforms[@]}" -d "$1" "${@:2}"
}
download "$dest" \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 \
  aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 \
  multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 idna==3.20 \
  prometheus_client==0.26.0
full=$(mktemp -d)
trap 'rm -rf "$full"' EXIT
download "$full" nvidia-pytriton==0.7.0 numpy==1.26.4
python3 "$here/repack_wheel.py" "$full"/nvidia_pytriton-*.whl "$dest" --keep-stub "$pyver" --lzma
python3 "$here/repack_wheel.py" "$full"/numpy-*.whl "$dest/stub" --lzma
du -sh "$dest"
