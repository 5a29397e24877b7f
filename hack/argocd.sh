#!/usr/bin/env bash
# Builds Argo CD's all-in-one binary (application controller, repo-server: symlink the names) from
# github.com/argoproj/argo-cd/v3 into its own cache, for the GitOps tier that is not wired yet.
# Not part of `make test` or CI: it needs Go 1.27 (fetched as a toolchain from the module proxy)
# and about 23 CPU-minutes cold (measured 2026-12-02: 72 min wall at nice 19 on a loaded 2-core
# machine; user 19m48s, sys 3m19s). Prints the binary's path on its last line.
#
# Why a wrapper module with argo-cd's own replace block: replace directives of a dependency do
# not apply, so without them k8s.io/kubernetes pulls k8s.io/kubelet@v0.0.0, which no proxy
# serves; gitops-engine (a nested module, replaced by a path upstream) resolves to its tag.
set -euo pipefail
ARGOCD_VERSION=${ARGOCD_VERSION:-v3.6.1}
export GOTOOLCHAIN=go1.27.3 GOFLAGS="-mod=mod -buildvcs=false -trimpath" CGO_ENABLED=0
root=${MODELLOOP_TOOLS:-$HOME/.cache/modelloop/tools}/argocd-$ARGOCD_VERSION
out=$root/bin/argocd
[ -x "$out" ] && { echo "$out"; exit 0; }
mkdir -p "$root/src" "$root/bin"
cd "$root/src"
printf 'module modelloop.dev/tools/argocd\n\ngo 1.27\n' >go.mod
go get "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" >&2
upstream=$(go mod download -json "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
sed -n '/^replace (/,/^)/p' "$upstream" >>go.mod
go build -o "$out" github.com/argoproj/argo-cd/v3/cmd >&2
echo "$out"
