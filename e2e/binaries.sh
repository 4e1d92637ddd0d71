#!/usr/bin/env bash
# Provides the pinned binaries of the local control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler), kwok, helm, Kueue, LeaderWorkerSet, a kstatus CLI,
# the autoscaling stack (Prometheus, prometheus-adapter, KEDA's operator and metrics API server) and
# the release tools (syft, actionlint),
# cached outside the repo so only the first run on a machine pays for them.
#
# Without internet (this project's CI) each one is built from its Go module via
# the module proxy; with KUBEFORGE_DOWNLOAD=1 the official release archives of the
# control plane, kwok and helm are downloaded instead (the others are always built:
# prometheus-adapter publishes no binaries, and our Prometheus is a smaller build).
#
# usage: e2e/binaries.sh [component ...]   (default: the cluster set + helm)
#        prints the directory holding the binaries on its last line.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
# The Kubernetes version helm assumes without a cluster (`helm template`): helm's release Makefile
# stamps it from its go.mod's k8s.io/client-go (v0.34.x for v3.19.5: 1.34); unstamped it is 1.20.
HELM_K8S=${HELM_K8S:-1.34}
HELM_STAMP="$HELM_VERSION+k8s$HELM_K8S"
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}
KSTATUS_VERSION=${KSTATUS_VERSION:-v0.37.2} # sigs.k8s.io/cli-utils (Flux's kstatus)
CYCLONUS_VERSION=${CYCLONUS_VERSION:-v0.5.6} # NetworkPolicy semantics (e2e/netpol)
# Prometheus publishes its Go module as v0.3XX.Y for release v3.XX.Y (v0.316.0 is v3.16.0).
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
PROMETHEUS_ADAPTER_VERSION=${PROMETHEUS_ADAPTER_VERSION:-v0.12.0}
# Also the version of the KEDA CRDs the e2e tests install (e2e/monitoring.py KEDA_VERSION).
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
# The release tools of `make images` (hack/images.sh) and `make lint`: an SBOM per image, and the
# release workflow's linter.
SYFT_VERSION=${SYFT_VERSION:-v1.57.2}
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
# LeaderWorkerSet; also the version of its CRDs and webhooks the e2e tests install (e2e/lws.py).
LWS_VERSION=${LWS_VERSION:-v0.7.0}
# The Gateway API implementation of the canary e2e (e2e/gateway.py): Traefik v3, pure Go. Its
# go.mod pins the Gateway API version whose standard-channel CRDs the tests install.
TRAEFIK_VERSION=${TRAEFIK_VERSION:-v3.6.12}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.4.0} # sigs.k8s.io/gateway-api in Traefik's go.mod

CACHE=${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}
BIN="$CACHE/bin"
WORK="$CACHE/build"
mkdir -p "$BIN" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
LDSTRIP="-s -w"

KSTATUS_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kstatus/main.go"
NETPOL_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/netpol/main.go"

log() { echo "[binaries] $*" >&2; }

have() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

build_kubernetes() {
  if have kube-apiserver "$K8S_VERSION" && have kube-controller-manager "$K8S_VERSION" && have kube-scheduler "$K8S_VERSION"; then return; fi
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION from the k8s.io/kubernetes module"
  local dir="$WORK/kubernetes-$K8S_VERSION" staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$dir"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module kubeforge.local/k8s-build"
    echo
    echo "go $(awk '$1=="go"{print $2; exit}' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # every staging module the release replaces with a local path gets its published version
    awk -v v="$staging" '$2=="=>" && $3 ~ /^\.\/staging\// {print "replace " $1 " => " $1 " " v}' "$gomod"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="$LDSTRIP"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true
   cd "$dir" && go build -trimpath -ldflags "$ld" -o "$BIN/" \
     k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
  for b in kube-apiserver kube-controller-manager kube-scheduler; do stamp "$b" "$K8S_VERSION"; done
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return
  log "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<GO
module kubeforge.local/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GO
  cat >"$dir/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$dir" && go mod tidy >/dev/null && go build -trimpath -ldflags "$LDSTRIP" -o "$BIN/etcd" .)
  stamp etcd "$ETCD_VERSION"
}

build_small_cli() { # name source go-version module version
  # Our own tiny CLI around a library (kstatus: Flux's status.Compute, e2e/kstatus/main.go; netpol:
  # cyclonus's policy engine, e2e/netpol/main.go); the stamp carries a hash of that source so an
  # edit rebuilds it. Never downloaded: no release ships it.
  local name=$1 src=$2 go=$3 module=$4 version=$5
  local stamp; stamp=$(component_stamp "$name")
  have "$name" "$stamp" && return
  log "building $name from $module $version"
  local dir="$WORK/$name-$version"
  mkdir -p "$dir"
  printf 'module kubeforge.local/%s\n\ngo %s\n\nrequire %s %s\n' "$name" "$go" "$module" "$version" >"$dir/go.mod"
  cp "$src" "$dir/main.go"
  (cd "$dir" && go mod tidy >/dev/null && go build -trimpath -ldflags "$LDSTRIP" -o "$BIN/$name" .)
  stamp "$name" "$stamp"
}

go_install() { # name module/cmd version [ldflags] [stamp, default: version] [build tags]
  local tag=${5:-$3}
  have "$1" "$tag" && return
  log "building $1 $tag from $2"
  GOBIN="$BIN" go install -trimpath ${6:+-tags "$6"} -ldflags "$LDSTRIP ${4:-}" "$2@$3"
  stamp "$1" "$tag"
}

go_build_in_module() { # module version ldflags name=./pkg ...
  # Builds in the module's own folder in the module cache, with its own go.mod and go.sum (as its
  # Makefile does), where `go install pkg@version` refuses: KEDA's go.mod has replace and exclude
  # directives, and for prometheus-adapter go install also reads the module's version list (for
  # deprecation notices), which the proxy refuses (403) while it serves every file of v0.12.0.
  # go build writes nothing there (-mod=readonly); the binaries land in $BIN under the given names.
  local module=$1 version=$2 ld=$3 names=() pkgs=() pair
  shift 3
  for pair in "$@"; do names+=("${pair%%=*}"); pkgs+=("${pair#*=}"); done
  local missing=0 name
  for name in "${names[@]}"; do have "$name" "$version" || missing=1; done
  [ "$missing" = 1 ] || return 0
  log "building ${names[*]} $version from $module"
  local src out="$WORK/${names[0]}-$version"
  src=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out" && mkdir -p "$out"
  # One go build for all packages: their shared dependencies compile once, in parallel.
  (cd "$src" && go build -trimpath -ldflags "$LDSTRIP $ld" -o "$out/" "${pkgs[@]}")
  for pair in "$@"; do
    mv -f "$out/$(basename "${pair#*=}")" "$BIN/${pair%%=*}"
    stamp "${pair%%=*}" "$version"
  done
  rm -rf "$out"
}

build_prometheus() {
  # Only the file and HTTP service discoveries (plugins/minimum.go): `remove_all_sd` leaves out the
  # cloud ones (AWS, Azure, GCE, Kubernetes, ...), which are most of the build. Without the
  # `builtinassets` tag the web UI is not embedded; the HTTP API the tests query is all there.
  local release minor=${PROMETHEUS_VERSION#v0.}
  release="3.$((10#${minor%%.*} - 300)).${minor#*.}"
  go_install prometheus github.com/prometheus/prometheus/cmd/prometheus "$PROMETHEUS_VERSION" \
    "-X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Branch=HEAD" \
    "$PROMETHEUS_VERSION+remove_all_sd" remove_all_sd
}

build_keda() {
  # KEDA's operator (which also serves the gRPC metrics service) and its metrics API server, named
  # as KEDA's Makefile names them.
  go_build_in_module github.com/kedacore/keda/v2 "$KEDA_VERSION" \
    "-X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}" keda=./cmd/operator keda-adapter=./cmd/adapter
}

build_traefik() {
  # Its go.mod has replace directives, so it builds in its own module (as its Makefile does).
  go_build_in_module github.com/traefik/traefik/v3 "$TRAEFIK_VERSION" \
    "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" traefik=./cmd/traefik
  # ... and the Gateway API's standard-channel CRDs, from the same module version Traefik is built on
  local src
  src=$(go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$BIN/gateway-api-crds" && mkdir -p "$BIN/gateway-api-crds"
  cp "$src"/config/crd/standard/*.yaml "$BIN/gateway-api-crds/"
  chmod -R u+w "$BIN/gateway-api-crds"
  stamp gateway-api-crds "$TRAEFIK_VERSION"
}

build_lws() {
  # The manager's main package is the module's ./cmd (LWS's Makefile: go build cmd/main.go), so
  # `go install` would name the binary "cmd"; built in the module, named as its image names it.
  go_build_in_module sigs.k8s.io/lws "$LWS_VERSION" \
    "-X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION" lws=./cmd
}

download_release() { # for machines with internet: official binaries
  local os=linux arch; arch=$(go env GOARCH 2>/dev/null || echo amd64)
  local k8s="https://dl.k8s.io/release/$K8S_VERSION/bin/$os/$arch"
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    have "$b" "$K8S_VERSION" || { curl -fsSLo "$BIN/$b" "$k8s/$b" && chmod +x "$BIN/$b" && stamp "$b" "$K8S_VERSION"; }
  done
  have etcd "$ETCD_VERSION" || { curl -fsSL "https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION/etcd-$ETCD_VERSION-$os-$arch.tar.gz" | tar -xz -C "$BIN" --strip-components=1 "etcd-$ETCD_VERSION-$os-$arch/etcd" && stamp etcd "$ETCD_VERSION"; }
  have kwok "$KWOK_VERSION" || { curl -fsSLo "$BIN/kwok" "https://github.com/kubernetes-sigs/kwok/releases/download/$KWOK_VERSION/kwok-$os-$arch" && chmod +x "$BIN/kwok" && stamp kwok "$KWOK_VERSION"; }
  have helm "$HELM_STAMP" || { curl -fsSL "https://get.helm.sh/helm-$HELM_VERSION-$os-$arch.tar.gz" | tar -xz -C "$BIN" --strip-components=1 "$os-$arch/helm" && stamp helm "$HELM_STAMP"; }
}

# The binaries each component leaves in $BIN, and the stamp that says they are current.
component_binaries() {
  case "$1" in
    kubernetes) echo kube-apiserver kube-controller-manager kube-scheduler ;;
    keda) echo keda keda-adapter ;;
    traefik) echo traefik gateway-api-crds ;;
    *) echo "$1" ;;
  esac
}
component_stamp() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kubernetes) echo "$K8S_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_STAMP" ;;
    kueue) echo "$KUEUE_VERSION" ;;
    kstatus) echo "$KSTATUS_VERSION-$(sha256sum "$KSTATUS_SRC" | cut -c1-12)" ;;
    netpol) echo "$CYCLONUS_VERSION-$(sha256sum "$NETPOL_SRC" | cut -c1-12)" ;;
    prometheus) echo "$PROMETHEUS_VERSION+remove_all_sd" ;;
    prometheus-adapter) echo "$PROMETHEUS_ADAPTER_VERSION" ;;
    keda) echo "$KEDA_VERSION" ;;
    lws) echo "$LWS_VERSION" ;;
    traefik) echo "$TRAEFIK_VERSION" ;; # its go.mod pins GATEWAY_API_VERSION
    syft) echo "$SYFT_VERSION" ;;
    actionlint) echo "$ACTIONLINT_VERSION" ;;
    *) return 1 ;;
  esac
}
current() { # component: every binary it leaves is there, stamped with its pinned version
  local stamp name
  stamp=$(component_stamp "$1")
  for name in $(component_binaries "$1"); do have "$name" "$stamp" || return 1; done
}

build() { # component: the build itself; its output goes to the component's log
  case "$1" in
    etcd) build_etcd ;;
    kubernetes) build_kubernetes ;;
    kwok) go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" ;;
    helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${HELM_K8S%%.*} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${HELM_K8S#*.}
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${HELM_K8S%%.*} -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${HELM_K8S#*.}" "$HELM_STAMP" ;;
    kueue) go_install kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_VERSION" ;;
    kstatus) build_small_cli kstatus "$KSTATUS_SRC" 1.24 sigs.k8s.io/cli-utils "$KSTATUS_VERSION" ;;
    netpol) build_small_cli netpol "$NETPOL_SRC" 1.22 github.com/mattfenwick/cyclonus "$CYCLONUS_VERSION" ;;
    prometheus) build_prometheus ;;
    prometheus-adapter) go_build_in_module sigs.k8s.io/prometheus-adapter "$PROMETHEUS_ADAPTER_VERSION" "" \
      prometheus-adapter=./cmd/adapter ;;
    keda) build_keda ;;
    lws) build_lws ;;
    traefik) build_traefik ;;
    syft) go_install syft github.com/anchore/syft/cmd/syft "$SYFT_VERSION" "-X main.version=${SYFT_VERSION#v}" ;;
    actionlint) go_install actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION" \
      "-X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" ;;
  esac
}

minutes() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

build_component() { # component: build it unless current, timed, with its own log; a failure names both
  local c=$1 lock="$BIN/.$1.lock" log="$LOGS/$1.log" last="" started rc=0
  # One builder per component: concurrent callers (xdist workers, make dev beside make test) wait
  # here and then find it current.
  exec {lockfd}>"$lock"
  flock "$lockfd"
  if current "$c"; then return 0; fi
  [ -f "$BIN/.$c.seconds" ] && last="; its last build here took $(minutes "$(cat "$BIN/.$c.seconds")")"
  log "building $c $(component_stamp "$c")$last; log: $log"
  started=$SECONDS
  # In the background and then waited for, so that errexit holds inside the build (bash ignores it
  # in a subshell whose status is tested with || or &&).
  build "$c" >"$log" 2>&1 &
  wait $! || rc=$?
  if [ "$rc" != 0 ] || ! current "$c"; then
    log "FAILED: $c (exit status $rc after $(minutes $((SECONDS - started)))); the end of its log, $log:"
    tail -n 25 "$log" | sed 's/^/    /' >&2
    return 1
  fi
  echo $((SECONDS - started)) >"$BIN/.$c.seconds"
  log "built $c in $(minutes $((SECONDS - started)))"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kubernetes kwok helm)
for c in "${components[@]}"; do
  component_stamp "$c" >/dev/null || { echo "unknown component: $c" >&2; exit 2; }
done
[ "${KUBEFORGE_DOWNLOAD:-0}" = 1 ] && download_release

# Components build side by side, KUBEFORGE_BUILD_JOBS at a time (default 2): one Go build leaves the
# cores idle while it downloads modules and while it links (one process per binary), which the other
# fills. Each component's status lands in a file, as `wait -n` keeps no status for a later `wait`.
LOGS="$WORK/logs"
mkdir -p "$LOGS"
JOBS=${KUBEFORGE_BUILD_JOBS:-2}
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
for c in "${components[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  (build_component "$c"; touch "$results/$c.ok") &
done
wait
failed=()
for c in "${components[@]}"; do [ -f "$results/$c.ok" ] || failed+=("$c"); done
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED to build: ${failed[*]} (logs in $LOGS)"
  exit 1
fi
echo "$BIN"
