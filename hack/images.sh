#!/usr/bin/env bash
# Build the operator, trainer and server images from ./Dockerfile (`make images` calls this), and
# optionally import them into a containerd, e.g. the one a test cluster's kubelet uses.
#
#   hack/images.sh [build] [--builder auto|buildah|docker] [--address SOCKET] [operator|trainer|server ...]
#   hack/images.sh import --address SOCKET [operator|trainer|server ...]   # import what is built, build nothing
#   hack/images.sh prune                                                  # drop earlier builds' layers
#
# Without Docker (the default where no Docker daemon answers) it builds with buildah, as root, with
# nothing from a container registry:
#   - the base image localhost/modelloop/python:3.11-bookworm is made with mmdebstrap from the Debian
#     mirror (once; ~180 MB);
#   - the Python dependencies come from a wheelhouse that the host's pip downloads once per set of pins
#     (~3 GB: PyPI's torch bundles CUDA) into ~/.cache/modelloop/wheelhouse/, mounted read-only into
#     the build and installed with `pip install --no-index`;
#   - each image is labelled with a hash of what goes into it (Dockerfile, pyproject.toml, the package
#     directories it copies, the base, the build arguments); when an image with that hash exists the
#     build is skipped, so a second run with nothing changed takes seconds.
# With Docker (--builder docker, or IMAGE_BUILDER=docker) it runs plain `docker build --target ...`
# from the python:3.11-slim-bookworm base and PyPI.
#
# Importing (--address, or MODELLOOP_CONTAINERD_ADDRESS) streams each image into containerd's k8s.io
# namespace with `ctr images import` and labels it with the image ID; an image whose ID containerd
# already has is skipped, and the layers containerd already holds (the torch layers the trainer and
# server share, the unchanged layers of a rebuilt image) are left out of the stream. Other code can
# also source this file and call
#   images_import SOCKET [operator|trainer|server ...]
#
# Environment:
#   IMAGE_BUILDER                     auto (default), buildah or docker
#   MODELLOOP_CONTAINERD_ADDRESS      containerd socket to import into after building
#   MODELLOOP_CONTAINERD_NAMESPACE    containerd namespace (default k8s.io, the one the CRI plugin uses)
#   MODELLOOP_CONTAINERD_SNAPSHOTTER  snapshotter to unpack into (default: containerd's default)
#   MODELLOOP_IMAGE_REPO              image names' prefix (default ghcr.io/modelloop)
#   MODELLOOP_IMAGE_TAG               image tag (default: pyproject.toml's version)
#   TORCH_INDEX_URL                   torch's index (default PyPI; https://download.pytorch.org/whl/cpu: CPU-only)
#   MODELLOOP_CACHE                   base tarball, wheelhouse and lock (default ~/.cache/modelloop)
#   STORAGE_DRIVER                    buildah's storage driver (default: its storage.conf's; overlay)
set -euo pipefail

IMAGES_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_ALL=(operator trainer server)
IMAGES_CACHE=${MODELLOOP_CACHE:-$HOME/.cache/modelloop}
IMAGES_BASE=localhost/modelloop/python:3.11-bookworm
IMAGES_SUITE=bookworm
IMAGES_LABEL=dev.modelloop.build-hash
IMAGES_ID_LABEL=dev.modelloop.image-id
# The wheels are for the base's interpreter: CPython 3.11 on glibc 2.36 (bookworm), this machine's
# architecture (mmdebstrap makes the base for it). pip needs every manylinux tag spelled out.
IMAGES_ARCH=$(uname -m)
IMAGES_PIP_TARGET=(--python-version 3.11 --implementation cp --abi cp311 --only-binary=:all:)
for y in $(seq 36 -1 5); do IMAGES_PIP_TARGET+=(--platform "manylinux_2_${y}_$IMAGES_ARCH"); done
for legacy in 2014 2010 1; do IMAGES_PIP_TARGET+=(--platform "manylinux${legacy}_$IMAGES_ARCH"); done

log() { printf '[images] %s\n' "$*" >&2; }
die() {
  printf '[images] error: %s\n' "$*" >&2
  exit 1
}
need() {  # tool package: fail with the apt line that installs it
  command -v "$1" >/dev/null || die "$1 not found; install it: apt-get install $2"
}

image_version() {
  python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$IMAGES_ROOT/pyproject.toml"
}

image_name() {  # operator|trainer|server -> the image's name, e.g. ghcr.io/modelloop/operator:0.1.0
  echo "${MODELLOOP_IMAGE_REPO:-ghcr.io/modelloop}/$1:${MODELLOOP_IMAGE_TAG:-$(image_version)}"
}

image_inputs() {  # what goes into an image's build context (keep in step with the Dockerfile's COPYs)
  echo Dockerfile .dockerignore pyproject.toml README.md hack/image-requirements.py operator/modelloop
  case $1 in
    trainer) echo trainer-image/modelloop_trainer ;;
    server) echo trainer-image/modelloop_trainer server-image/modelloop_server ;;
  esac
}

inputs_hash() {  # target extra...: a hash of the target's inputs' contents and of the extra strings
  local target=$1 paths
  shift
  read -r -a paths <<<"$(image_inputs "$target" | tr '\n' ' ')"
  {
    printf '%s\n' "$target" "$@"
    (cd "$IMAGES_ROOT" && find "${paths[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-32
}

human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "$1 B"; }

# ---------------------------------------------------------------- buildah

buildah_label() {  # image label: the label's value, empty when the image or the label is missing
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

buildah_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }

buildah_size() { buildah images --noheading --format '{{.Size}}' "$1" | head -1; }  # uncompressed, e.g. "386 MB"

buildah_preflight() {
  [ "$(id -u)" = 0 ] || die "building with buildah needs root here (overlay storage, mmdebstrap): sudo make images"
  need buildah buildah
  need python3 python3
  local driver
  driver=$(buildah info --format '{{.store.GraphDriverName}}' 2>/dev/null) ||
    die "buildah cannot open its storage; try STORAGE_DRIVER=vfs (slow and large: a full copy per layer)"
  [ "$driver" = vfs ] && log "warning: buildah uses the vfs storage driver: every layer is a full copy (~5 GB each for trainer/server)"
  return 0
}

build_base() {  # the Debian base, made with mmdebstrap once (rebuilt when its recipe changes)
  local recipe=(--variant=minbase --include='python3,python3-venv,ca-certificates'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' "$IMAGES_SUITE")
  local hash t0=$SECONDS
  hash=$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-32)
  if [ "$(buildah_label "$IMAGES_BASE" "$IMAGES_LABEL")" = "$hash" ]; then
    log "base $IMAGES_BASE: up to date"
    return
  fi
  need mmdebstrap mmdebstrap
  log "base $IMAGES_BASE: mmdebstrap $IMAGES_SUITE from the Debian mirror (about a minute)"
  local tar=$IMAGES_TMP/rootfs.tar ctr
  mmdebstrap --quiet "${recipe[@]}" "$tar" || die "mmdebstrap failed (is the Debian mirror reachable?)"
  ctr=$(buildah from --quiet scratch)
  buildah add --quiet "$ctr" "$tar" / >/dev/null
  rm -f "$tar"
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["python3"]' --label "$IMAGES_LABEL=$hash" "$ctr"
  buildah commit --quiet --rm "$ctr" "$IMAGES_BASE" >/dev/null
  log "base $IMAGES_BASE: built in $((SECONDS - t0))s, $(buildah_size "$IMAGES_BASE")"
}

host_pip() {  # pip on this machine: the project's virtualenv's, python3's, or one in a virtualenv made for it
  if [ -x "$IMAGES_ROOT/.venv/bin/python" ] && "$IMAGES_ROOT/.venv/bin/python" -m pip --version >/dev/null 2>&1; then
    "$IMAGES_ROOT/.venv/bin/python" -m pip "$@"
  elif python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip "$@"
  else
    if [ ! -x "$IMAGES_CACHE/pip/bin/pip" ]; then
      log "no pip on this machine: making a virtualenv for it in $IMAGES_CACHE/pip"
      python3 -m venv "$IMAGES_CACHE/pip" || die "python3 -m venv failed: apt-get install python3-venv"
    fi
    "$IMAGES_CACHE/pip/bin/python" -m pip "$@"
  fi
}

wheelhouse() {  # prints the wheelhouse directory for the current pins, downloading what it lacks
  local reqs=$IMAGES_TMP/requirements key dir t0=$SECONDS
  python3 "$IMAGES_ROOT/hack/image-requirements.py" "$IMAGES_ROOT/pyproject.toml" "$reqs"
  cat "$reqs"/{build,operator,trainer,server}.txt | LC_ALL=C sort -u >"$reqs/all.txt"
  # TORCH_INDEX_URL: torch (and what it needs) from that index, the rest from PyPI.
  local torch_index=${TORCH_INDEX_URL:-}
  if [ -n "$torch_index" ]; then
    grep -vxF -f "$reqs/torch.txt" "$reqs/all.txt" >"$reqs/pypi.txt" || true
  else
    cp "$reqs/all.txt" "$reqs/pypi.txt"
  fi
  key=$( (cat "$reqs/all.txt" && printf '%s\n' "${IMAGES_PIP_TARGET[@]}" ${torch_index:+"torch-index=$torch_index"}) |
    sha256sum | cut -c1-16)
  dir=$IMAGES_CACHE/wheelhouse/$key
  if [ -e "$dir/.complete" ]; then
    log "wheelhouse $dir: up to date"
    echo "$dir"
    return
  fi
  mkdir -p "$dir"
  # A new set of pins starts from the last wheelhouse (hard links), so only what changed is downloaded.
  local previous
  previous=$(find "$IMAGES_CACHE/wheelhouse" -mindepth 2 -maxdepth 2 -name .complete -printf '%T@ %h\n' 2>/dev/null |
    sort -rn | head -1 | cut -d' ' -f2-)
  if [ -n "$previous" ]; then cp -al "$previous"/*.whl "$dir"/ 2>/dev/null || true; fi
  log "wheelhouse $dir: pip download of the pinned requirements (first time: ~3 GB, torch bundles CUDA)"
  host_pip download --quiet --progress-bar off --disable-pip-version-check "${IMAGES_PIP_TARGET[@]}" \
    --dest "$dir" -r "$reqs/pypi.txt" >&2 || die "pip download failed (see above); the wheelhouse is $dir"
  if [ -n "$torch_index" ]; then
    host_pip download --quiet --progress-bar off --disable-pip-version-check "${IMAGES_PIP_TARGET[@]}" \
      --index-url "$torch_index" --dest "$dir" -r "$reqs/torch.txt" >&2 ||
      die "pip download of torch from $torch_index failed (see above)"
  fi
  cp "$reqs/all.txt" "$dir/requirements.txt"
  touch "$dir/.complete"
  # Older wheelhouses are superseded; their files live on as hard links where still needed.
  find "$IMAGES_CACHE/wheelhouse" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  log "wheelhouse $dir: $(du -sh "$dir" | cut -f1) in $((SECONDS - t0))s"
  echo "$dir"
}

build_buildah() {  # target...
  build_base
  local wheels base_id
  wheels=$(wheelhouse)
  base_id=$(buildah_id "$IMAGES_BASE")
  local target name hash t0 args built=0
  for target in "$@"; do
    t0=$SECONDS
    name=$(image_name "$target")
    args=(--build-arg "PYTHON_IMAGE=$IMAGES_BASE" --build-arg "PIP_ARGS=--no-index --find-links /wheels")
    [ -n "${TORCH_INDEX_URL:-}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    hash=$(inputs_hash "$target" buildah "$base_id" "${args[@]}")
    if [ "$(buildah_label "$name" "$IMAGES_LABEL")" = "$hash" ]; then
      log "$target: up to date ($name, $(buildah_size "$name"), $((SECONDS - t0))s)"
      continue
    fi
    log "$target: building $name"
    # --layers: each step is cached, so the torch layers built for one of trainer/server are reused
    # as-is by the other (one copy on disk), and a source change rebuilds only the top layers.
    buildah bud --quiet --layers --isolation chroot --force-rm --target "$target" \
      "${args[@]}" --volume "$wheels:/wheels:ro" --label "$IMAGES_LABEL=$hash" \
      --tag "$name" --file "$IMAGES_ROOT/Dockerfile" "$IMAGES_ROOT" >/dev/null ||
      die "buildah bud --target $target failed (see above)"
    log "$target: built $name in $((SECONDS - t0))s, $(buildah_size "$name")"
    built=1
  done
  if [ $built = 1 ]; then prune_stale; fi
}

prune_stale() {  # removes the big leftovers of earlier builds (hack/image-prune.py says which), keeps the cache
  local ids
  mapfile -t ids < <(python3 "$IMAGES_ROOT/hack/image-prune.py" "$(buildah info --format '{{.store.GraphRoot}}')" \
    "$(buildah info --format '{{.store.GraphDriverName}}')" "$IMAGES_BASE")
  [ ${#ids[@]} = 0 ] && return 0
  if buildah rmi "${ids[@]}" >/dev/null; then
    log "removed ${#ids[@]} leftover images of earlier builds (their torch and dependency layers)"
  else
    log "warning: could not remove some leftover images of earlier builds (see above)"
  fi
}

# ---------------------------------------------------------------- docker

build_docker() {  # target...
  need docker docker.io
  local target name hash t0 args
  for target in "$@"; do
    t0=$SECONDS
    name=$(image_name "$target")
    args=()
    [ -n "${TORCH_INDEX_URL:-}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    hash=$(inputs_hash "$target" docker "${args[@]}")
    if [ "$(docker image inspect --format "{{index .Config.Labels \"$IMAGES_LABEL\"}}" "$name" 2>/dev/null)" = "$hash" ]; then
      log "$target: up to date ($name)"
      continue
    fi
    docker build --target "$target" "${args[@]}" --label "$IMAGES_LABEL=$hash" \
      -t "$name" -f "$IMAGES_ROOT/Dockerfile" "$IMAGES_ROOT" ||
      die "docker build --target $target failed (see above)"
    log "$target: built $name in $((SECONDS - t0))s, $(human "$(docker image inspect --format '{{.Size}}' "$name")")"
  done
}

# ---------------------------------------------------------------- containerd

# images_import SOCKET [target...]: put the built images into the containerd listening on SOCKET
# (namespace $MODELLOOP_CONTAINERD_NAMESPACE, default k8s.io), under their names. Skips an image
# containerd already has with the same image ID.
images_import() {
  local address=${1:?images_import: containerd socket address}
  shift
  local targets=("$@")
  [ ${#targets[@]} = 0 ] && targets=("${IMAGES_ALL[@]}")
  need ctr containerd
  local ns=${MODELLOOP_CONTAINERD_NAMESPACE:-k8s.io} builder
  builder=$(pick_builder)
  local ctr_=(ctr --address "$address" --namespace "$ns") unpack=()
  [ -n "${MODELLOOP_CONTAINERD_SNAPSHOTTER:-}" ] && unpack=(--snapshotter "$MODELLOOP_CONTAINERD_SNAPSHOTTER")
  "${ctr_[@]}" version >/dev/null 2>&1 || die "no containerd answers at $address"
  local target name ref id t0
  for target in "${targets[@]}"; do
    t0=$SECONDS
    name=$(image_name "$target")
    ref=$(normalize "$name")
    if [ "$builder" = docker ]; then
      id=$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null) || die "$name is not built (make images)"
    else
      id=$(buildah_id "$name" 2>/dev/null) || die "$name is not built (make images)"
    fi
    if "${ctr_[@]}" images ls "name==$ref" | grep -q "$IMAGES_ID_LABEL=$id"; then
      log "$target: containerd at $address already has $ref ($id)"
    else
      if [ "$builder" = docker ]; then  # docker save: uncompressed layers, all of them
        docker save "$name" | "${ctr_[@]}" images import --base-name "${ref%:*}" "${unpack[@]}" - >/dev/null
      else
        buildah_to_containerd "$name" "$ref" "${unpack[@]}"
      fi
      "${ctr_[@]}" images ls -q "name==$ref" | grep -qx "$ref" || die "$ref is not in containerd after the import"
      "${ctr_[@]}" images label "$ref" "$IMAGES_ID_LABEL=$id" >/dev/null
      log "$target: imported $ref into containerd at $address in $((SECONDS - t0))s"
    fi
  done
}

# buildah_to_containerd NAME REF [ctr import options]: streams image NAME into containerd ($ctr_) as
# REF, leaving out the layers containerd already holds: after the first image, the multi-gigabyte
# torch layers are not ingested and unpacked again, so a rebuilt trainer or server imports in about
# the time buildah takes to write it. buildah writes a docker-archive, uncompressed (gzip'ing
# gigabytes of CUDA libraries only to unpack them again costs minutes; its `oci:` transport always
# compresses), which hack/image-archive.py turns into an OCI archive without those layers.
buildah_to_containerd() {
  local name=$1 ref=$2
  shift 2
  local have
  have=$(mktemp)
  if "${ctr_[@]}" content ls -q >"$have" &&
    buildah push --quiet --disable-compression "$name" "docker-archive:/dev/stdout:$name" |
    python3 "$IMAGES_ROOT/hack/image-archive.py" "$have" "${ref##*:}" |
    "${ctr_[@]}" images import --base-name "${ref%:*}" "$@" - >/dev/null; then
    rm -f "$have"
  else
    rm -f "$have"
    die "importing $name into containerd failed (see above)"
  fi
}

normalize() {  # an image name as containerd stores it: docker.io/ added to names without a registry
  local name=$1 first=${1%%/*}
  if [[ $name != */* ]]; then
    echo "docker.io/library/$name"
  elif [[ $first == *.* || $first == *:* || $first == localhost ]]; then
    echo "$name"
  else
    echo "docker.io/$name"
  fi
}

# ---------------------------------------------------------------- main

pick_builder() {
  case ${IMAGE_BUILDER:-auto} in
    buildah | docker) echo "$IMAGE_BUILDER" ;;
    auto) if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; else echo buildah; fi ;;
    *) die "IMAGE_BUILDER must be auto, buildah or docker, not ${IMAGE_BUILDER}" ;;
  esac
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
  local command=build address=${MODELLOOP_CONTAINERD_ADDRESS:-} targets=()
  while [ $# -gt 0 ]; do
    case $1 in
      build | import | prune) command=$1 ;;
      --builder) IMAGE_BUILDER=${2:?--builder needs a value}; shift ;;
      --builder=*) IMAGE_BUILDER=${1#*=} ;;
      --address) address=${2:?--address needs a containerd socket}; shift ;;
      --address=*) address=${1#*=} ;;
      operator | trainer | server) targets+=("$1") ;;
      -h | --help) usage; return 0 ;;
      *) die "unknown argument: $1 (see hack/images.sh --help)" ;;
    esac
    shift
  done
  [ ${#targets[@]} = 0 ] && targets=("${IMAGES_ALL[@]}")
  local builder
  builder=$(pick_builder)
  [ "$builder" = buildah ] && [ "$command" != import ] && buildah_preflight
  mkdir -p "$IMAGES_CACHE"
  IMAGES_TMP=$(mktemp -d "$IMAGES_CACHE/tmp.XXXXXX")
  trap 'rm -rf "$IMAGES_TMP"' EXIT
  case $command in
    build)
      # One build at a time: two would race on the wheelhouse and the base.
      exec 9>"$IMAGES_CACHE/images.lock"
      flock -n 9 || { log "waiting for another hack/images.sh build to finish"; flock 9; }
      log "building ${targets[*]} with $builder"
      "build_$builder" "${targets[@]}"
      if [ -n "$address" ]; then images_import "$address" "${targets[@]}"; fi
      ;;
    import)
      [ -n "$address" ] || die "import needs --address SOCKET (or MODELLOOP_CONTAINERD_ADDRESS)"
      images_import "$address" "${targets[@]}"
      ;;
    prune)
      prune_stale
      ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
