#!/usr/bin/env bash
# Builds the operator and trainer images from images/*/Dockerfile without a Docker daemon or a
# registry: buildah (chroot isolation) into a store of our own under ~/.cache/kubeforge/images.
#
# usage: hack/images.sh build [operator|trainer ...]   the images, into the store (default: both)
#        hack/images.sh release [operator|trainer ...]  build, then write to dist/images/ (or
#                                                      $KUBEFORGE_IMAGES_OUT) for each image:
#                                                      <name>-<version>.oci.tar (OCI archive, gzip layers),
#                                                      <name>-<version>.docker.tar (`docker load`),
#                                                      <name>-<version>.spdx.json (SBOM, syft), sizes.tsv
#        hack/images.sh name operator|trainer          the image's name:tag
#        hack/images.sh buildah ARGS...                buildah on this store (inspect, from, mount, rm, ...)
#
# The Dockerfiles are the one definition (`docker build` takes them unchanged). Their FROM images are
# made here from Debian packages under the exact names they use, so FROM resolves without a pull:
#   python:3.11-slim                                  Debian bookworm (debootstrap, minbase) + python3, pip
#   pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime      that + PyPI's torch 2.9.1 (its CUDA 12.8 build, the
#                                                     machine's copy from hack/install-torch.sh) + numpy
# A registry's real base images are the same Python and torch, on Debian rather than Ubuntu/conda.
# Each is made once per machine (a stamp holds its recipe); builds reuse buildah's layer cache.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}
STORE="$CACHE/images"
REGISTRY=${KUBEFORGE_IMAGE_REGISTRY:-ghcr.io/kubeforge}
# The one version: kubeforge.__version__ (pyproject.toml's too; the chart's appVersion, its default
# image tag and the examples' trainer image are checked against it by tests/test_versions.py).
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' operator/kubeforge/__init__.py)
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_VERSION=2.9.1
PYTHON_BASE=docker.io/library/python:3.11-slim
TORCH_BASE=docker.io/pytorch/pytorch:$TORCH_VERSION-cuda12.8-cudnn9-runtime
# A base's recipe revision: bump it when what goes in changes, so machines make it again.
PYTHON_BASE_RECIPE="$DEBIAN_SUITE-python3-pip-r1"
TORCH_BASE_RECIPE="torch-$TORCH_VERSION-cu128-numpy2-on-$PYTHON_BASE_RECIPE"
# overlay (fast: a layer is a diff) where the kernel allows it, else vfs (a full copy per layer)
DRIVER=${KUBEFORGE_IMAGE_STORAGE_DRIVER:-overlay}

log() { echo "[images] $*" >&2; }
bah() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver "$DRIVER" "$@"; }

image_name() {
  case "$1" in
    operator) echo "$REGISTRY/kubeforge-operator:$VERSION" ;;
    trainer) echo "$REGISTRY/kubeforge-trainer:$VERSION" ;;
    *) echo "unknown image: $1 (operator or trainer)" >&2; return 2 ;;
  esac
}

ensure_tools() { # buildah and runc (the tests run the images with it) from Debian's packages
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} = 0 ] && return
  log "installing ${missing[*]} from Debian's packages"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
}

base_current() { # image recipe
  bah inspect --type image "$1" >/dev/null 2>&1 && [ "$(cat "$STORE/.base.$(basename "$1").recipe" 2>/dev/null)" = "$2" ]
}

commit_rootfs() { # rootfs image recipe [buildah config args...]: the folder as the image's one layer
  local rootfs=$1 image=$2 recipe=$3 ctr mnt
  shift 3
  ctr=$(bah from scratch)
  mnt=$(bah mount "$ctr")
  cp -a "$rootfs/." "$mnt/"
  bah umount "$ctr" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --label "io.kubeforge.base-recipe=$recipe" "$@" "$ctr"
  bah commit -q --rm "$ctr" "$image" >/dev/null
  echo "$recipe" >"$STORE/.base.$(basename "$image").recipe"
}

make_python_base() {
  base_current "$PYTHON_BASE" "$PYTHON_BASE_RECIPE" && return
  log "making $PYTHON_BASE from Debian $DEBIAN_SUITE packages (debootstrap, once per machine)"
  local rootfs="$STORE/work/python-base"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-pip "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$STORE/work/debootstrap.log" 2>&1 || { tail -n 20 "$STORE/work/debootstrap.log" >&2; return 1; }
  # What the official image has: `python` and `pip` on PATH, pip installs into the system Python
  # (no PEP 668 marker: the image is the environment), no apt lists, docs or locales.
  ln -sf python3 "$rootfs/usr/bin/python"
  ln -sf pip3 "$rootfs/usr/bin/pip"
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,man,info,locale}/*
  commit_rootfs "$rootfs" "$PYTHON_BASE" "$PYTHON_BASE_RECIPE" --cmd python3
  rm -rf "$rootfs"
}

make_torch_base() {
  base_current "$TORCH_BASE" "$TORCH_BASE_RECIPE" && return
  local torch
  torch=$(ls -d "$CACHE"/torch-"$TORCH_VERSION"-py311-r*/ 2>/dev/null | sort | tail -n 1)
  [ -n "$torch" ] && [ -f "$torch/.complete" ] \
    || { log "no torch $TORCH_VERSION under $CACHE: run 'make torch' first (hack/install-torch.sh)"; return 1; }
  log "making $TORCH_BASE: $PYTHON_BASE + torch from $torch + numpy (once per machine)"
  local ctr mnt site
  ctr=$(bah from --pull=never "$PYTHON_BASE")
  mnt=$(bah mount "$ctr")
  site="$mnt/usr/local/lib/python3.11/dist-packages"
  mkdir -p "$site" "$mnt/usr/local/bin"
  # The machine's torch is a `pip install --target` folder: its packages as they are, its scripts
  # (torchrun, ...) with their interpreter line pointed at the image's Python.
  tar -C "$torch" --exclude=./bin --exclude=./.complete --exclude='*/__pycache__' -cf - . | tar -C "$site" -xf -
  local script
  for script in "$torch"/bin/*; do
    sed '1s|^#!.*python.*$|#!/usr/bin/python3|' "$script" >"$mnt/usr/local/bin/$(basename "$script")"
    chmod 755 "$mnt/usr/local/bin/$(basename "$script")"
  done
  bah umount "$ctr" >/dev/null
  bah run --isolation chroot "${CA_MOUNT[@]}" "$ctr" -- pip install -q --no-cache-dir "numpy>=2,<3" >&2
  bah config --label "io.kubeforge.base-recipe=$TORCH_BASE_RECIPE" "$ctr"
  bah commit -q --rm "$ctr" "$TORCH_BASE" >/dev/null
  echo "$TORCH_BASE_RECIPE" >"$STORE/.base.$(basename "$TORCH_BASE").recipe"
}

source_hash() { # operator|trainer: what the image is made of (Dockerfile, context, base recipes)
  {
    cat "images/$1/Dockerfile" .dockerignore pyproject.toml README.md
    echo "$PYTHON_BASE_RECIPE $TORCH_BASE_RECIPE"
    find operator/kubeforge -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

build_image() { # operator|trainer
  local name dockerfile="images/$1/Dockerfile" t=$SECONDS hash
  name=$(image_name "$1")
  local from
  for from in $(awk 'toupper($1) == "FROM" {print $2}' "$dockerfile"); do
    case "$from" in
      python:3.11-slim | pytorch/pytorch:"$TORCH_VERSION"-cuda12.8-cudnn9-runtime) ;;
      *) log "$dockerfile: FROM $from has no local recipe in hack/images.sh; add one"; return 1 ;;
    esac
  done
  hash=$(source_hash "$1")
  if [ "$(bah inspect --type image --format '{{index .ImageAnnotations "io.kubeforge.source"}}' "$name" 2>/dev/null)" = "$hash" ]; then
    log "$name is current (sources $hash)"
    return
  fi
  # buildah's layer cache does not see what a RUN --mount=type=bind,from=<stage> brings in (the
  # operator's wheels), so such a Dockerfile builds without it; the others keep their cached layers.
  local cache=()
  grep -q -- '--mount=type=bind,from=' "$dockerfile" && cache=(--no-cache)
  log "building $name from $dockerfile (sources $hash)"
  bah bud --isolation chroot --pull=never --layers "${cache[@]}" "${CA_MOUNT[@]}" \
    --annotation "io.kubeforge.source=$hash" -f "$dockerfile" -t "$name" . >"$STORE/work/$1.log" 2>&1 \
    || { log "FAILED: $name; the end of $STORE/work/$1.log:"; tail -n 25 "$STORE/work/$1.log" >&2; return 1; }
  log "built $name in $((SECONDS - t)) s"
}

release() { # image...: their archives and SBOMs, each written again only when its image changed
  local out=${KUBEFORGE_IMAGES_OUT:-dist/images} image name base id t
  mkdir -p "$out"
  ensure_syft
  printf 'image\tid\toci_archive_bytes\tdocker_archive_bytes\tsbom_packages\n' >"$out/sizes.tsv.new"
  for image in "$@"; do
    name=$(image_name "$image")
    base="$out/kubeforge-$image-$VERSION"
    id=$(bah inspect --type image --format '{{.FromImageID}}' "$name")
    if [ "$(cat "$base.id" 2>/dev/null)" != "$id" ] || [ ! -f "$base.spdx.json" ]; then
      t=$SECONDS
      log "writing $base.oci.tar, .docker.tar, .spdx.json"
      rm -f "$base".*
      # the OCI archive's layers gzip-compressed, as a registry stores them: its size is the pull size
      bah push -q "$name" "oci-archive:$base.oci.tar:$name"
      bah push -q "$name" "docker-archive:$base.docker.tar:$name"
      sbom "$name" "$base.spdx.json"
      echo "$id" >"$base.id"
      log "wrote the archives and SBOM of $name in $((SECONDS - t)) s"
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "${id:0:12}" "$(stat -c %s "$base.oci.tar")" "$(stat -c %s "$base.docker.tar")" \
      "$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["packages"]))' "$base.spdx.json")" \
      >>"$out/sizes.tsv.new"
  done
  mv "$out/sizes.tsv.new" "$out/sizes.tsv"
  column -t "$out/sizes.tsv" >&2
}

sbom() { # image file: syft over the image's root filesystem (an archive's layer may exceed syft's 2 GiB
  # read limit for one file: the trainer's torch layer is bigger), named as the image
  local ctr mnt rc=0
  ctr=$(bah from --pull=never "$1")
  mnt=$(bah mount "$ctr")
  SYFT_CHECK_FOR_APP_UPDATE=false "$SYFT" scan -q "dir:$mnt" --source-name "${1%:*}" --source-version "${1##*:}" \
    -o "spdx-json=$2" || rc=$?
  bah rm "$ctr" >/dev/null
  return "$rc"
}

ensure_syft() {
  local bin
  bin=$(e2e/binaries.sh syft | tail -n 1)
  SYFT="$bin/syft"
}

CA_MOUNT=()
# The build's own network is the host's: a host that reaches PyPI through its own CA gives its bundle
# to the build steps (mounted for the build only, never in a layer).
[ -f /etc/ssl/certs/ca-certificates.crt ] && CA_MOUNT=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)

command=${1:-build}
shift || true
case "$command" in
  name) image_name "$1" ;;
  buildah) bah "$@" ;;
  build | release)
    ensure_tools
    mkdir -p "$STORE/work"
    exec {lockfd}>"$STORE/.lock"
    flock "$lockfd" # one build at a time (make images beside make test)
    images=("$@")
    [ ${#images[@]} -gt 0 ] || images=(operator trainer)
    make_python_base
    for image in "${images[@]}"; do
      if [ "$image" = trainer ]; then make_torch_base; fi
      build_image "$image"
    done
    if [ "$command" = release ]; then release "${images[@]}"; fi
    ;;
  *) echo "usage: $0 build|release [operator|trainer ...] | name operator|trainer | buildah ARGS..." >&2; exit 2 ;;
esac
