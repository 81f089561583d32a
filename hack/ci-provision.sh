#!/usr/bin/env bash
# Provisions what the `cluster` jest project needs on a fresh machine, before `npm test`:
#   1. Debian packages: iproute2 (ip netns, bridges, veth), openssl (cluster certificates),
#      util-linux + mount (unshare, mount --bind for pod volumes), procps, curl (in-pod API test).
#   2. Go >= 1.26 (Kubernetes 1.36 needs it). When the machine has none, Debian's golang-go
#      bootstraps the official toolchain module (golang.org/toolchain) from the Go module proxy.
#   3. The control-plane binaries (hack/build-k8s.sh: cached outside the tree, skipped when present).
# Idempotent; a warm machine passes through in seconds. Called from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

GO_TOOLCHAIN_VERSION=1.26.8
log() { printf '[ci-provision %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
start=$SECONDS

[[ $(id -u) -eq 0 ]] || die "must run as root: the local cluster creates network namespaces and a bridge"

need_pkgs=()
for pair in ip:iproute2 openssl:openssl unshare:util-linux mount:mount setsid:util-linux pgrep:procps curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
go_ok() { command -v go >/dev/null 2>&1 && [[ "$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')" -ge 26 ]]; }
go_ok || need_pkgs+=(golang-go ca-certificates)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  log "apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! go_ok; then
  # Debian's Go is too old for Kubernetes 1.36 (and for GOTOOLCHAIN). Fetch the official toolchain,
  # which is published as a Go module, and make its files executable (module zips carry no modes).
  root="${PIVOT_CACHE_DIR:-$HOME/.cache/pivot}/go$GO_TOOLCHAIN_VERSION"
  if [[ ! -x "$root/bin/go" ]]; then
    log "fetching Go $GO_TOOLCHAIN_VERSION (golang.org/toolchain) through the Go module proxy"
    tmpmod="$(mktemp -d)"
    dir="$(cd "$tmpmod" && GOFLAGS=-modcacherw go mod download -json "golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-amd64" |
      sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')"
    [[ -d "$dir" ]] || die "could not download golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-amd64"
    rm -rf "$root.tmp" && cp -a "$dir" "$root.tmp" && rm -rf "$tmpmod"
    chmod -R u+w "$root.tmp" && chmod +x "$root.tmp"/bin/* "$root.tmp"/pkg/tool/*/*
    mv -T "$root.tmp" "$root"
  fi
  export PATH="$root/bin:$PATH"
  go_ok || die "Go $GO_TOOLCHAIN_VERSION at $root does not run"
fi
log "$(go version)"

# Pod networking needs network namespaces; fail here, not in the middle of the test run.
probe="pivot-provision-$$"
ip netns add "$probe" 2>/dev/null && ip netns del "$probe" || die "cannot create network namespaces (ip netns add) on this machine"

bash hack/build-k8s.sh >/dev/null
log "ready in $((SECONDS - start)) s; binaries in $(bash hack/build-k8s.sh --print-dir)"
