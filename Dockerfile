# The three modelloop images, one target each (build from the repository root):
#
#   docker build --target operator -t ghcr.io/modelloop/operator:0.1.0 .   # modelloop-operator (kopf), no torch
#   docker build --target trainer  -t ghcr.io/modelloop/trainer:0.1.0 .    # modelloop-trainer train|verify|seed-dataset
#   docker build --target server   -t ghcr.io/modelloop/server:0.1.0 .     # modelloop-server and modelloop-sidecar
#
# `make images` builds all three (hack/images.sh: buildah without Docker, or Docker when it runs).
# The trainer and server images share one torch layer (the `torch` stage): built once, stored once,
# pulled once per node.
#
# Build arguments:
#   PYTHON_IMAGE     the base: any Debian-like image with python3 (3.11) and its venv module.
#                    hack/images.sh passes a local mmdebstrap'ed bookworm (localhost/modelloop/python:3.11-bookworm).
#   TORCH_INDEX_URL  where torch comes from. Empty (default): PyPI, whose torch bundles CUDA and NCCL, so the
#                    trainer uses GPUs (the NVIDIA container toolkit injects the driver). The trainer and server
#                    images are then ~6.5 and ~6 GB, 5.6 GB of which is the torch layer they share.
#                    https://download.pytorch.org/whl/cpu: CPU-only torch, a far smaller server image.
#   PIP_ARGS         extra arguments to every pip install, e.g. an air-gapped build from a wheelhouse:
#                    buildah bud --volume "$PWD/wheels:/wheels:ro" --build-arg PIP_ARGS="--no-index --find-links /wheels"
#                    (hack/images.sh fills the wheelhouse with `pip download` on the host).
#
# Every image runs as uid 65532 with a read-only root filesystem: everything that writes goes to /tmp
# (an emptyDir in the chart and the Jobs) or, for the server, /models. Only the package directories are
# copied in (see .dockerignore): never the development environment (dev/) or the tests.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# pyproject.toml's pins, one file per layer below (hack/image-requirements.py), so that the layers
# are rebuilt only when their own pins change, not whenever pyproject.toml does.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml hack/image-requirements.py /src/
RUN python3 /src/image-requirements.py /src/pyproject.toml /requirements

# What every image shares: a virtualenv on PATH and a runtime environment that writes nothing outside /tmp.
FROM ${PYTHON_IMAGE} AS python
# prune-console-scripts.py: after the modelloop wheel is installed, removes the console scripts of
# modules the image does not carry (modelloop-devnode, the trainer's and server's in the operator
# image, ...), so that each image lists only what it can run.
RUN python3 -m venv /opt/modelloop \
 && printf '%s\n' \
      'import importlib.metadata, pathlib, sys' \
      'for ep in importlib.metadata.distribution("modelloop").entry_points.select(group="console_scripts"):' \
      '    try:' \
      '        ep.load()' \
      '    except ImportError:' \
      '        pathlib.Path(sys.prefix, "bin", ep.name).unlink()' \
    > /opt/modelloop/prune-console-scripts.py
ENV PATH=/opt/modelloop/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The modelloop wheel each image installs holds only the packages that image runs: operator here;
# operator + trainer and operator + trainer + server in the wheel stages further down, which extend
# this one (setuptools skips the `where` directories of pyproject.toml that are absent, dev/ included).
FROM python AS operator-wheel
ARG PIP_ARGS=
COPY pyproject.toml README.md /src/
COPY operator/modelloop/ /src/operator/modelloop/
RUN pip wheel $PIP_ARGS --no-deps --wheel-dir /dist /src

# The operator image: `modelloop-operator` (kopf). Small, CPU-only, no torch.
FROM python AS operator
ARG PIP_ARGS=
COPY --from=requirements /requirements/operator.txt /opt/modelloop/requirements/
RUN pip install $PIP_ARGS -r /opt/modelloop/requirements/operator.txt
COPY --from=operator-wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && python3 /opt/modelloop/prune-console-scripts.py \
 && modelloop-operator --help >/dev/null
# The same uid the chart's securityContext names; no shell access needed at runtime.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["modelloop-operator"]
CMD ["--all-namespaces"]

FROM operator-wheel AS trainer-wheel
ARG PIP_ARGS=
COPY trainer-image/modelloop_trainer/ /src/trainer-image/modelloop_trainer/
RUN rm -rf /dist /src/build && pip wheel $PIP_ARGS --no-deps --wheel-dir /dist /src

# torch and what the trainer and server both need: the layers the two images share.
FROM python AS torch
ARG PIP_ARGS=
ARG TORCH_INDEX_URL=
COPY --from=requirements /requirements/torch.txt /opt/modelloop/requirements/
RUN pip install $PIP_ARGS ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} -r /opt/modelloop/requirements/torch.txt
COPY --from=requirements /requirements/shared.txt /opt/modelloop/requirements/
RUN pip install $PIP_ARGS -r /opt/modelloop/requirements/shared.txt

# The trainer image: `modelloop-trainer train | verify | seed-dataset` (docs/contracts.md).
FROM torch AS trainer
# torch.compile (on by default on CUDA) has Triton build a small C launcher at first use: it needs gcc
# and Python.h. Installed only if the base lacks them, so a base that has them builds without apt.
RUN need=; command -v gcc >/dev/null || need="gcc libc6-dev"; \
    python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      || need="$need python3-dev"; \
    if [ -n "$need" ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi
ARG PIP_ARGS=
COPY --from=requirements /requirements/trainer.txt /opt/modelloop/requirements/
RUN pip install $PIP_ARGS -r /opt/modelloop/requirements/trainer.txt
COPY --from=trainer-wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && python3 /opt/modelloop/prune-console-scripts.py \
 && python3 -c "import modelloop_trainer.train, modelloop_trainer.verify" \
 && modelloop-trainer --help >/dev/null
# Everything that writes goes under /tmp, which the Job mounts as an emptyDir (the trainer downloads
# parents and stages a version there; size it for 2x the weights). NVIDIA_VISIBLE_DEVICES is left to
# the device plugin (or `docker run --gpus`); the capabilities are the ones CUDA compute needs.
ENV XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCH_HOME=/tmp/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The distroless "nonroot" uid: no entry in /etc/passwd is needed, and the policy's
# securityContext can require runAsNonRoot.
USER 65532:65532
WORKDIR /tmp
# The operator runs `command + [verb]` (command defaults to ["modelloop-trainer"]); under torchrun
# the command is ["torchrun", ..., "-m", "modelloop_trainer"].
CMD ["modelloop-trainer", "--help"]

FROM trainer-wheel AS server-wheel
ARG PIP_ARGS=
COPY server-image/modelloop_server/ /src/server-image/modelloop_server/
RUN rm -rf /dist /src/build && pip wheel $PIP_ARGS --no-deps --wheel-dir /dist /src

# The server image, two entrypoints: `modelloop-server` (model server) and `modelloop-sidecar` (reload
# sidecar). Everything written goes to /models (the emptyDir the two share) or /tmp (an emptyDir too).
FROM torch AS server
ARG PIP_ARGS=
COPY --from=requirements /requirements/server.txt /opt/modelloop/requirements/
RUN pip install $PIP_ARGS -r /opt/modelloop/requirements/server.txt
COPY --from=server-wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && python3 /opt/modelloop/prune-console-scripts.py \
 && python3 -c "import modelloop_server.app, modelloop_server.sidecar"
ENV MODELLOOP_MODEL_DIR=/models
USER 65532:65532
EXPOSE 8080
ENTRYPOINT []
CMD ["modelloop-server"]
