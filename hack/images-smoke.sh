#!/usr/bin/env bash
# Smoke test of the built images without a cluster: starts a throwaway containerd (root, state and
# socket in a temporary directory), imports the images with `hack/images.sh import`, and runs each
# image once with `ctr run` the way a restricted Pod runs it: read-only root filesystem, the image's
# own user (65532), /tmp a tmpfs, no network. Then stops containerd and removes everything.
#
#   hack/images-smoke.sh [operator|trainer|server ...]     (as root, after make images)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "images-smoke: needs root (containerd, runc)" >&2; exit 1; }
for tool in containerd ctr runc; do
  command -v "$tool" >/dev/null || { echo "images-smoke: $tool not found; apt-get install containerd runc" >&2; exit 1; }
done
targets=("$@")
[ ${#targets[@]} = 0 ] && targets=(operator trainer server)

tmp=$(mktemp -d /tmp/modelloop-images-smoke.XXXXXX)
sock=$tmp/containerd.sock
cat >"$tmp/config.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
# No CRI plugin (nothing here needs a kubelet); no snapshotters this kernel may lack.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
EOF
containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
containerd_pid=$!
cleanup() {
  local rc=$?
  kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
  # Whatever containerd left mounted under the temporary directory (deepest first).
  awk -v d="$tmp" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$tmp"
  if [ $rc = 0 ]; then echo "images-smoke: all passed"; else echo "images-smoke: FAILED (exit $rc)"; fi
}
trap cleanup EXIT
ctr_=(ctr --address "$sock" --namespace k8s.io)
for _ in $(seq 60); do "${ctr_[@]}" version >/dev/null 2>&1 && break; sleep 0.5; done
"${ctr_[@]}" version >/dev/null || { cat "$tmp/containerd.log" >&2; exit 1; }

t0=$SECONDS
bash hack/images.sh import --address "$sock" "${targets[@]}"
echo "images-smoke: imported in $((SECONDS - t0))s; again (nothing to do):"
t0=$SECONDS
bash hack/images.sh import --address "$sock" "${targets[@]}"
echo "images-smoke: second import in $((SECONDS - t0))s"
"${ctr_[@]}" images ls | awk '/modelloop/ {print "  " $1, $4, $5}'

# What every image must hold to: uid/gid 65532, a read-only root, a writable /tmp, no dev package, no tests.
common='
import importlib.util, os, pathlib
assert (os.getuid(), os.getgid()) == (65532, 65532), (os.getuid(), os.getgid())
try:
    open("/opt/modelloop/probe", "w")
    raise SystemExit("the root filesystem is writable")
except OSError:
    pass
pathlib.Path("/tmp/probe").write_text("ok")
assert importlib.util.find_spec("modelloop_dev") is None, "the dev package is in the image"
assert not any(pathlib.Path("/opt/modelloop").rglob("modelloop*/tests")), "tests are in the image"
print("  uid 65532, read-only root, writable /tmp, no dev package, no tests")
'
run() {  # image name what command...
  local image=$1 name=$2
  echo "images-smoke: $name: $3"
  shift 3
  "${ctr_[@]}" run --rm --read-only \
    --mount "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777" \
    "$image" "modelloop-smoke-$name-$$" "$@"
}
for target in "${targets[@]}"; do
  image=$(bash -c 'source hack/images.sh && image_name "$1"' _ "$target")
  run "$image" "$target" "restrictions" python3 -c "$common"
  case $target in
    operator) run "$image" operator "modelloop-operator --help" modelloop-operator --help >"$tmp/out" && head -3 "$tmp/out" ;;
    trainer)
      run "$image" trainer "modelloop-trainer --help" modelloop-trainer --help >"$tmp/out" && head -3 "$tmp/out"
      run "$image" trainer "import torch" python3 -c 'import torch; print("  torch", torch.__version__, "cuda", torch.version.cuda)'
      ;;
    server)
      run "$image" server "import the server and the sidecar" python3 -c 'import modelloop_server.app, modelloop_server.sidecar; print("  server and sidecar import")'
      run "$image" server "entrypoints on PATH" sh -c 'command -v modelloop-server && command -v modelloop-sidecar'
      ;;
  esac
done
