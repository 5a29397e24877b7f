#!/usr/bin/env bash
# GPU smoke test of the trainer's CUDA path (device selection, bf16 autocast, torch.compile, NCCL).
# Run on a machine with an NVIDIA GPU, from the repository root, after `make setup`:
#     bash bench/gpu_smoke.sh            # optional: EPOCHS=30 BATCH=256
# It starts a private MinIO on loopback, seeds the digits dataset, trains on the GPU while sampling
# nvidia-smi, verifies the result, and (with 2+ GPUs) trains again under torchrun with NCCL.
# Prints epoch times, GPU utilisation and the verification figures to stdout; exits non-zero on failure.
set -euo pipefail

PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-30}
BATCH=${BATCH:-256}
BIN=${MODELLOOP_TOOLS_BIN:-$(ls -td ~/.cache/modelloop/tools/*/bin 2>/dev/null | head -1)}
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this needs an NVIDIA GPU" >&2; exit 2; }
[[ -x "$BIN/minio" ]] || { echo "minio not found under '$BIN': run make tools or set MODELLOOP_TOOLS_BIN" >&2; exit 2; }
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'

WORK=$(mktemp -d /tmp/modelloop-gpu-smoke.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
CONSOLE_PORT=$(free_port)
export MINIO_ROOT_USER=smoke MINIO_ROOT_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$BIN/minio" server --quiet --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$CONSOLE_PORT" "$WORK/minio" >"$WORK/minio.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/minio/health/ready" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PORT/minio/health/ready" >/dev/null || { cat "$WORK/minio.log" >&2; exit 1; }

export MODELLOOP_S3_ENDPOINT=127.0.0.1:$PORT AWS_ACCESS_KEY_ID=$MINIO_ROOT_USER AWS_SECRET_ACCESS_KEY=$MINIO_ROOT_PASSWORD
export MODELLOOP_BUCKET=smoke MODELLOOP_MODEL=digits MODELLOOP_DATASET=datasets/digits
export MODELLOOP_HYPERPARAMETERS="{\"epochs\": $EPOCHS, \"batchSize\": $BATCH, \"earlyStoppingPatience\": 0}"
"$PY" -c 'from modelloop.clients.objectstore import ObjectStore; ObjectStore.from_env().ensure_bucket()'
"$PY" -m modelloop_trainer seed-dataset --dataset datasets/digits

nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$WORK/smi.csv" &
SMI=$!
PIDS+=($SMI)
MODELLOOP_VERSION=v1 "$PY" -m modelloop_trainer train 2>&1 | tee "$WORK/train.log" | grep -E "epoch [0-9]+/|published|failed"
kill "$SMI"

report() {
  "$PY" - "$1" "$WORK/smi.csv" <<'PYEOF'
import json, statistics, sys
from modelloop.clients.objectstore import ObjectStore
version, smi = sys.argv[1], sys.argv[2]
m = ObjectStore.from_env().get_json(f"digits/{version}/metrics.json")
sec = m["epochSeconds"]
util = [float(l.split(",")[0]) for l in open(smi) if l.strip() and l.split(",")[0].strip().isdigit()]
mem = [float(l.split(",")[1]) for l in open(smi) if l.strip() and l.split(",")[0].strip().isdigit()]
print(f"{version}: device {m['device']}, world size {m['worldSize']}, {m['epochsRun']} epochs, "
      f"validation accuracy {m['validationAccuracy']:.4f}")
print(f"  epoch seconds: first {sec[0]:.3f} (compile + warm-up), median of the rest {statistics.median(sec[1:]):.4f}")
if util:
    print(f"  GPU utilisation %: mean {statistics.mean(util):.1f}, max {max(util):.0f} ({len(util)} samples); "
          f"GPU memory used MiB: max {max(mem):.0f}")
PYEOF
}
report v1

MODELLOOP_VERSION=v1 "$PY" -m modelloop_trainer verify 2>&1 | tail -1
"$PY" -c 'from modelloop.clients.objectstore import ObjectStore; print(ObjectStore.from_env().get_bytes("digits/v1/verification.json").decode())'

GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
if (( GPUS >= 2 )); then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$WORK/smi.csv" &
  SMI=$!
  PIDS+=($SMI)
  MODELLOOP_VERSION=v2 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m modelloop_trainer train 2>&1 \
    | grep -E "process group|published|failed"
  kill "$SMI"
  report v2
else
  echo "one GPU: skipping the NCCL (torchrun) run"
fi
