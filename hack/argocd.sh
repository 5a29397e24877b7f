#!/usr/bin/env bash
# Builds Argo CD's all-in-one binary (the application controller, the repo-server and the `argocd`
# CLI, chosen by ARGOCD_BINARY_NAME) from github.com/argoproj/argo-cd/v3 into its own cache, and
# copies the module's Application and AppProject CRDs and the two Git wrapper scripts of Argo CD's
# image beside it, for the cluster tier's GitOps steps
# (dev/modelloop_dev/argocd.py) and tests/integration/test_argocd_lua.py. Prints its bin directory
# on its last line; instant once built.
#
# Needs Go 1.27 (fetched as a toolchain from the module proxy) and about 23 CPU-minutes cold
# (2026-12-02: user 19m48s, sys 3m19s; 72 min wall at nice 19 on a loaded 2-core machine).
#
# Why a wrapper module with argo-cd's own replace block: replace directives of a dependency do
# not apply, so without them k8s.io/kubernetes pulls k8s.io/kubelet@v0.0.0, which no proxy
# serves; gitops-engine (a nested module, replaced by a path upstream) resolves to its tag.
set -euo pipefail
ARGOCD_VERSION=${ARGOCD_VERSION:-v3.6.1}
export GOTOOLCHAIN=go1.27.3 GOFLAGS="-mod=mod -buildvcs=false -trimpath" CGO_ENABLED=0
root=${MODELLOOP_TOOLS:-$HOME/.cache/modelloop/tools}/argocd-$ARGOCD_VERSION
out=$root/bin/argocd
say() { echo "[argocd] $*" >&2; }
if [ -x "$out" ] && [ -f "$root/crds/application-crd.yaml" ] && [ -x "$root/bin/git-verify-wrapper.sh" ]; then
  echo "$root/bin"; exit 0
fi
mkdir -p "$root/src" "$root/bin"
cd "$root/src"
if [ ! -x "$out" ]; then
  start=$(date +%s)
  say "building Argo CD $ARGOCD_VERSION from its Go module (first time: 12-25 minutes on 2 cores)"
  printf 'module modelloop.dev/tools/argocd\n\ngo 1.27\n' >go.mod
  go get "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" >&2
  upstream=$(go mod download -json "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  sed -n '/^replace (/,/^)/p' "$upstream" >>go.mod
  go build -o "$out.tmp" github.com/argoproj/argo-cd/v3/cmd >&2
  mv "$out.tmp" "$out"
  say "built in $(( $(date +%s) - start ))s"
fi
mod=$(go mod download -json "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
rm -rf "$root/crds.tmp" && mkdir -p "$root/crds.tmp"
cp "$mod/manifests/crds/application-crd.yaml" "$mod/manifests/crds/appproject-crd.yaml" "$root/crds.tmp/"
chmod u+w "$root"/crds.tmp/*.yaml
rm -rf "$root/crds" && mv "$root/crds.tmp" "$root/crds"
# The repo-server runs these by name for every manifest generation (Argo CD's image puts them on PATH).
install -m 0755 "$mod/hack/git-verify-wrapper.sh" "$mod/hack/gpg-wrapper.sh" "$root/bin/"
echo "$root/bin"
