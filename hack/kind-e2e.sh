#!/usr/bin/env bash
# `make kind-e2e`: the README's install steps on a kind cluster, for anyone with Docker.
#
# kind cluster -> `make images` -> the images loaded into kind under the names the chart and the
# examples use -> the lines between <!-- install:begin --> and <!-- install:end --> in README.md,
# run verbatim (the same lines tests/cluster/test_install.py runs on a real kubelet in CI) -> the
# policy is Ready with v1 serving.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-modelloop-e2e}
KEEP=${E2E_KEEP_CLUSTER:-0}

die() { echo "kind-e2e: $*" >&2; exit 1; }
step() { echo; echo "==> $*"; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed; this target needs Docker, kind, kubectl and helm (see docs/install.md). 'make test-cluster' runs the same steps without Docker."
done
docker info >/dev/null 2>&1 || die "Docker is installed but not running (or not reachable by this user)."

cleanup() {
  status=$?
  if [[ $status -ne 0 ]]; then
    echo "kind-e2e: FAILED; state for debugging:" >&2
    kubectl get rp,mv,jobs,pods -A -o wide >&2 || true
    kubectl -n modelloop-system logs -l app.kubernetes.io/name=modelloop --tail=100 --prefix >&2 || true
  fi
  if [[ $KEEP != 1 ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  exit $status
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "images (make images) loaded into the cluster"
IMAGE_BUILDER=docker make --no-print-directory images
tag=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
for image in operator trainer server; do
  kind load docker-image --name "$CLUSTER" "ghcr.io/modelloop/$image:$tag"
done
docker pull quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z
kind load docker-image --name "$CLUSTER" quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z

step "the README's install steps"
install=$(sed -n '/<!-- install:begin/,/<!-- install:end/p' README.md | sed -e '1,/^```console/d' -e '/^```/,$d')
[ -n "$install" ] || die "README.md has no install block"
bash -euo pipefail -xc "$install"
echo "kind-e2e: v1 is serving; KUBECONFIG context kind-$CLUSTER (E2E_KEEP_CLUSTER=1 keeps the cluster)"
