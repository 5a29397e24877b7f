#!/usr/bin/env bash
# Builds the real control-plane and node binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl, CoreDNS), MinIO, Helm and the pod sandbox's pause
# binary from their Go modules, at the versions pinned in hack/versions.env, into a cache outside
# the repository (MODELLOOP_TOOLS, default ~/.cache/modelloop/tools/<pin-hash>/bin). A second run
# finds them and returns at once.
# Debian packages (promtool from `prometheus`, `lua5.1`) are installed with apt when missing.
# Prints the bin directory on its last line; everything else goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

pin_hash=$(cat "$here/versions.env" "$here/tools.sh" | sha256sum | cut -c1-12)  # content only: the same pins share a cache wherever the repo is cloned
root=${MODELLOOP_TOOLS:-$HOME/.cache/modelloop/tools}/$pin_hash
bin=$root/bin
mkdir -p "$bin" "$root/src"
export GOFLAGS="-mod=mod -buildvcs=false -trimpath"
export CGO_ENABLED=0
say() { printf '[tools] %s\n' "$*" >&2; }

gomod_of() {  # module@version -> path of its go.mod in the module cache
  (cd "$root/src" && go mod download -json "$1" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
}

# A wrapper module that requires $1@$2 and carries $3 (replace lines) so `go build` resolves
# the same dependency graph the upstream tag builds with.
wrapper() {
  local name=$1 mod=$2 ver=$3 replaces=$4 requires=${5:-} dir="$root/src/$1"
  mkdir -p "$dir"
  {
    echo "module modelloop.dev/tools/$name"
    echo
    echo "go 1.25"
    echo
    echo "require $mod $ver"
    [ -n "$requires" ] && printf 'require (\n%s\n)\n' "$requires"
    [ -n "$replaces" ] && printf 'replace (\n%s\n)\n' "$replaces"
  } >"$dir/go.mod"
  echo "$dir"
}

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) missing=0 t
  for t in "${want[@]}"; do [ -x "$bin/$t" ] || missing=1; done
  [ $missing = 0 ] && return
  say "building ${want[*]} $KUBERNETES_VERSION from k8s.io/kubernetes (first time: 15-25 min on 2 cores)"
  local upstream staging_ver replaces requires dir minor
  upstream=$(gomod_of "k8s.io/kubernetes@$KUBERNETES_VERSION")
  staging_ver="v0.${KUBERNETES_VERSION#v1.}"
  # ./staging/src/k8s.io/X -> the published k8s.io/X at v0.Y.Z
  replaces=$(sed -n '/^replace (/,/^)/p' "$upstream" | grep '=> ./staging' |
    sed -E "s#^\s*(k8s.io/[a-z0-9-]+) => .*#\t\1 => \1 $staging_ver#")
  # the upstream requires pin every dependency to what the tag was tested with; without them
  # `go mod tidy` would resolve missing modules (and k8s.io/kubernetes itself) at @latest
  requires=$(sed -n '/^require (/,/^)/p' "$upstream" | grep -vE '^(require \(|\))' | grep -v "k8s.io/kubernetes ")
  dir=$(wrapper kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION" "$replaces" "$requires")
  grep -E '^godebug' "$upstream" >>"$dir/go.mod" || true
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
  cat >"$dir/tools.go" <<GO
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && go build -tags tools -ldflags "$ld" -o "$bin/" "${want[@]/#/k8s.io/kubernetes/cmd/}")
}

build_etcd() {
  [ -x "$bin/etcd" ] && return
  say "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3 (first time: 2-4 min)"
  local upstream replaces dir
  upstream=$(gomod_of "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  # etcd's own replace directives point at sibling directories; pin them to the same tag
  replaces=$(sed -n '/^replace (/,/^)/p' "$upstream" | grep '=> \.\./' |
    sed -E "s#^\s*(go.etcd.io/etcd/[a-z0-9/]+) => .*#\t\1 => \1 $ETCD_VERSION#")
  dir=$(wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$replaces")
  cat >"$dir/main.go" <<'GO'
// Command etcd is the etcd server, built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$dir" && go mod tidy >/dev/null && go build -ldflags "-s -w" -o "$bin/etcd" .)
}

build_plain() {  # name module version package
  [ -x "$bin/$1" ] && return
  say "building $1 $3 from $2 (first time: a few minutes)"
  local dir
  dir=$(wrapper "$1" "$2" "$3" "")
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$4" >"$dir/tools.go"
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true
   go build -tags tools -ldflags "-s -w $5" -o "$bin/$1" "$4")
}

# The pod sandbox's process: holds the pod's namespaces, reaps orphans, exits on SIGINT/SIGTERM.
# Built here because no registry serves the upstream pause image to these machines.
build_pause() {
  [ -x "$bin/pause" ] && return
  say "building the pod sandbox's pause binary"
  local dir="$root/src/pause"
  mkdir -p "$dir"
  printf 'module modelloop.dev/tools/pause\n\ngo 1.25\n' >"$dir/go.mod"
  cat >"$dir/main.go" <<'GO'
// Command pause is a pod sandbox's init process: it does nothing but hold the pod's namespaces,
// reap orphaned children and exit when asked to.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  (cd "$dir" && go build -ldflags "-s -w" -o "$bin/pause" .)
}

debian() {
  local need=()
  command -v promtool >/dev/null || need+=(prometheus)
  command -v lua5.1 >/dev/null || need+=(lua5.1)
  [ ${#need[@]} = 0 ] && return
  say "installing Debian packages: ${need[*]}"
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
}

start=$(date +%s)
debian
build_etcd
build_plain minio github.com/minio/minio "$MINIO_VERSION" github.com/minio/minio ""
build_plain helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_plain coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns ""
build_pause
build_kubernetes
for t in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl minio helm coredns pause; do
  [ -x "$bin/$t" ] || { say "missing $bin/$t after build"; exit 1; }
done
say "tools ready in $(( $(date +%s) - start ))s: $bin"
echo "$bin"
