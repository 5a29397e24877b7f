#!/usr/bin/env bash
# Builds Kueue's controller manager (sigs.k8s.io/kueue/cmd/kueue) from its Go module at the version
# pinned in hack/kueue.env, and copies its CRDs out of the module, into a cache of its own
# (MODELLOOP_TOOLS, default ~/.cache/modelloop/tools/kueue-<pin-hash>/{bin,crds}): apart from
# hack/tools.sh's so that bumping Kueue never rebuilds Kubernetes. A second run returns at once.
# Prints the bin directory on its last line; everything else goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/kueue.env
source "$here/kueue.env"

pin_hash=$(cat "$here/kueue.env" "$here/kueue.sh" | sha256sum | cut -c1-12)
root=${MODELLOOP_TOOLS:-$HOME/.cache/modelloop/tools}/kueue-$pin_hash
bin=$root/bin
export GOFLAGS="-mod=mod -buildvcs=false -trimpath"
export CGO_ENABLED=0
say() { printf '[kueue] %s\n' "$*" >&2; }

if [ -x "$bin/kueue" ] && [ -d "$root/crds" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
mkdir -p "$bin" "$root/src"
dir=$root/src/kueue
mkdir -p "$dir"
mod=$(cd "$dir" && go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')

# Kueue's go.mod requires the k8s.io staging modules at a patch below ours; requiring ours makes
# the module graph pick them (minimal version selection takes the higher), so the packages our
# Kubernetes build already compiled come from the Go build cache instead of being rebuilt.
staging=$(grep -oE '^\s*k8s.io/(api|apiextensions-apiserver|apimachinery|apiserver|cli-runtime|client-go|code-generator|component-base|component-helpers|kms|kubectl|metrics) v0\.[0-9.]+' "$mod/go.mod" |
  awk -v v="$KUEUE_K8S_STAGING" '{printf "\t%s %s\n", $1, v}')
{
  echo "module modelloop.dev/tools/kueue"
  echo
  echo "go 1.25.0"
  echo
  echo "require sigs.k8s.io/kueue $KUEUE_VERSION"
  printf 'require (\n%s\n)\n' "$staging"
} >"$dir/go.mod"

say "building kueue $KUEUE_VERSION from sigs.k8s.io/kueue (first time: several minutes on 2 cores)"
ld="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.GitCommit=module"
# No `go mod tidy`: it loads every package of the graph, and k8s.io/code-generator's tools.go imports
# a main package, which tidy refuses; `go build -mod=mod` resolves just what cmd/kueue imports.
(cd "$dir" && go build -ldflags "$ld" -o "$bin/kueue" sigs.k8s.io/kueue/cmd/kueue)

# The CRDs the manager serves, exactly as the module ships them (the harness applies them).
rm -rf "$root/crds.tmp" && mkdir -p "$root/crds.tmp"
cp "$mod"/config/components/crd/bases/*.yaml "$root/crds.tmp/"
chmod u+w "$root"/crds.tmp/*.yaml
rm -rf "$root/crds" && mv "$root/crds.tmp" "$root/crds"

[ -x "$bin/kueue" ] || { say "missing $bin/kueue after build"; exit 1; }
say "kueue ready in $(( $(date +%s) - start ))s: $bin"
echo "$bin"
