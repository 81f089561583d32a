#!/usr/bin/env bash
# Builds the real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler),
# etcd and Helm from the Go module proxy through the wrapper modules in hack/k8s/, into a cache
# directory outside the work tree keyed by version. Prints the bin directory on stdout.
#
#   bash hack/build-k8s.sh              build if missing, then print the bin dir
#   bash hack/build-k8s.sh --print-dir  print the bin dir only (no build, no checks)
#
# Env: KUBEBUILDER_ASSETS  use these binaries instead (envtest convention; nothing is built)
#      PIVOT_CACHE_DIR     cache root (default $HOME/.cache/pivot)
#      PIVOT_BUILD_KUBECTL=1  also build a kubectl of the same version
#      GOFLAGS             passed to go (default -p=2: the machine is shared)
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.21.4

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${PIVOT_CACHE_DIR:-$HOME/.cache/pivot}"
BIN_DIR="$CACHE_ROOT/k8s-${K8S_VERSION}-etcd${ETCD_VERSION}-helm${HELM_VERSION}/bin"
SERVER_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd)

log() { printf '[build-k8s %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "${KUBEBUILDER_ASSETS:-$BIN_DIR}"
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1' (usage: build-k8s.sh [--print-dir])"

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  for b in "${SERVER_BINARIES[@]}"; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable '$b'"
  done
  log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS (nothing to build)"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

wanted=("${SERVER_BINARIES[@]}" helm)
[[ "${PIVOT_BUILD_KUBECTL:-}" == 1 ]] && wanted+=(kubectl)
missing=()
for b in "${wanted[@]}"; do [[ -x "$BIN_DIR/$b" ]] || missing+=("$b"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  log "binaries present in $BIN_DIR (skipping build)"
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. Install Go >= 1.26 (https://go.dev/dl/) or set KUBEBUILDER_ASSETS to a directory holding ${SERVER_BINARIES[*]}."
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[[ "$go_minor" =~ ^[0-9]+$ && "$go_minor" -ge 26 ]] || die "Go >= 1.26 is required to build Kubernetes ${K8S_VERSION}; found $(go env GOVERSION)"

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2}" GOTOOLCHAIN=local
mkdir -p "$(dirname "$BIN_DIR")"
STAGE="$(mktemp -d "$(dirname "$BIN_DIR")/bin.tmp.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
# Keep binaries that are already built (e.g. after an interrupted run) so only missing ones compile.
[[ -d "$BIN_DIR" ]] && cp -a "$BIN_DIR"/. "$STAGE"/

build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
needs() { for m in "${missing[@]}"; do [[ "$m" == "$1" ]] && return 0; done; return 1; }
go_install() { # dir ldflags packages...
  local dir="$1" ldflags="$2" started=$SECONDS ticker rc=0; shift 2
  # go install is silent for many minutes: a heartbeat shows the build is alive (CI logs too).
  ( while sleep 60; do log "  … still compiling ($((SECONDS - started)) s)"; done ) &
  ticker=$!
  (cd "$dir" && GOBIN="$STAGE" nice -n 10 go install -trimpath -ldflags "-s -w $ldflags" "$@") || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  [[ $rc -eq 0 ]] || die "go install in $dir failed (exit $rc)"
  log "  done in $((SECONDS - started)) s"
}

if needs kube-apiserver || needs kube-controller-manager || needs kube-scheduler || needs kubectl; then
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
  [[ "${PIVOT_BUILD_KUBECTL:-}" == 1 ]] && pkgs+=(k8s.io/kubernetes/cmd/kubectl)
  log "building Kubernetes $K8S_VERSION (${pkgs[*]##*/}) — cold builds take tens of minutes on 2 cores"
  go_install "$HACK_DIR/k8s/kubernetes" "$ld" "${pkgs[@]}"
fi

if needs etcd; then
  log "building etcd $ETCD_VERSION"
  go_install "$HACK_DIR/k8s/etcd" "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" go.etcd.io/etcd/server/v3
  # go install names a /v3 main package after the element before the major-version suffix: 'server'.
  mv "$STAGE/server" "$STAGE/etcd"
fi

if needs helm; then
  log "building Helm $HELM_VERSION"
  go_install "$HACK_DIR/k8s/helm" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" helm.sh/helm/v3/cmd/helm
fi

# Swap the complete set in atomically so a concurrent reader never sees a half-built directory.
if [[ -d "$BIN_DIR" ]]; then
  old="$(mktemp -d "$(dirname "$BIN_DIR")/bin.old.XXXXXX")"
  mv -T "$BIN_DIR" "$old/bin" && mv -T "$STAGE" "$BIN_DIR" && rm -rf "$old"
else
  mv -T "$STAGE" "$BIN_DIR"
fi
trap - EXIT
log "installed into $BIN_DIR"
echo "$BIN_DIR"
