#!/usr/bin/env bash
# `make kind-e2e`: the whole loop on a kind cluster, for anyone with Docker. CI cannot run it
# (no Docker there); the chart it installs is tested by tests/integration/test_chart.py.
#
# kind cluster -> images built and loaded -> MinIO with least-privilege users -> Secrets ->
# helm install charts/modelloop -> serving Deployment + the digits RetrainPolicy -> dataset seeded ->
# first training -> wait for an Active version -> reviewers post feedback -> wait for the retrain.
# kind has no GPUs: the policy is patched to train on CPU (gpusPerWorker 0, no GPU toleration).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-modelloop-e2e}
NS=${E2E_NAMESPACE:-modelloop-e2e}
TIMEOUT=${E2E_TIMEOUT:-30m}
KEEP=${E2E_KEEP_CLUSTER:-0}

die() { echo "kind-e2e: $*" >&2; exit 1; }
step() { echo; echo "==> $*"; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed; this target needs Docker, kind, kubectl and helm (see docs/install.md). 'make test' covers the same code without Docker."
done
docker info >/dev/null 2>&1 || die "Docker is installed but not running (or not reachable by this user)."

cleanup() {
  status=$?
  if [[ $status -ne 0 ]]; then
    echo "kind-e2e: FAILED; state for debugging:" >&2
    kubectl -n "$NS" get rp,mv,jobs,pods -o wide >&2 || true
    kubectl -n modelloop logs deploy/modelloop --tail=100 >&2 || true
  fi
  if [[ $KEEP != 1 ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  exit $status
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "images (make images) loaded into the cluster"
make --no-print-directory images
for image in modelloop/operator:dev modelloop/trainer:dev modelloop/server:dev; do
  kind load docker-image --name "$CLUSTER" "$image"
done

step "MinIO with a trainer (read-write) and a serving (read + feedback write) user"
kubectl apply -f hack/kind/minio.yaml
root_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
trainer_secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
serving_secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
kubectl -n modelloop create secret generic minio-root --from-literal=user=root \
  --from-literal=password="$root_password" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n modelloop rollout status deploy/minio --timeout=180s
kubectl -n modelloop create configmap minio-policies --from-file=hack/kind/trainer-policy.json \
  --from-file=hack/kind/serving-policy.json --dry-run=client -o yaml | kubectl apply -f -
kubectl -n modelloop create secret generic minio-users --from-literal=trainer="$trainer_secret" \
  --from-literal=serving="$serving_secret" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n modelloop delete job minio-setup --ignore-not-found
kubectl -n modelloop apply -f - <<'YAML'
apiVersion: batch/v1
kind: Job
metadata: {name: minio-setup}
spec:
  backoffLimit: 4
  template:
    spec:
      restartPolicy: OnFailure
      containers:
        - name: mc
          image: quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z
          env:
            - {name: MC_CONFIG_DIR, value: /tmp/mc}
            - name: ROOT_PASSWORD
              valueFrom: {secretKeyRef: {name: minio-root, key: password}}
            - name: TRAINER_SECRET
              valueFrom: {secretKeyRef: {name: minio-users, key: trainer}}
            - name: SERVING_SECRET
              valueFrom: {secretKeyRef: {name: minio-users, key: serving}}
          command: ["/bin/sh", "-ec"]
          args:
            - |
              mc alias set m http://minio:9000 root "$ROOT_PASSWORD"
              mc mb --ignore-existing m/models
              mc admin policy create m modelloop-trainer /policies/trainer-policy.json
              mc admin policy create m modelloop-serving /policies/serving-policy.json
              mc admin user add m modelloop-trainer "$TRAINER_SECRET"
              mc admin user add m modelloop-serving "$SERVING_SECRET"
              mc admin policy attach m modelloop-trainer --user modelloop-trainer || true
              mc admin policy attach m modelloop-serving --user modelloop-serving || true
          volumeMounts:
            - {name: policies, mountPath: /policies}
      volumes:
        - name: policies
          configMap: {name: minio-policies}
YAML
kubectl -n modelloop wait --for=condition=Complete job/minio-setup --timeout=180s

step "namespace $NS and its storage credentials Secrets"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic modelloop-trainer-s3 --from-literal=accessKey=modelloop-trainer \
  --from-literal=secretKey="$trainer_secret" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic modelloop-serving-s3 --from-literal=accessKey=modelloop-serving \
  --from-literal=secretKey="$serving_secret" --dry-run=client -o yaml | kubectl apply -f -

step "helm install charts/modelloop (watching $NS)"
helm upgrade --install modelloop charts/modelloop --namespace modelloop --wait --timeout 5m \
  --set image.tag=dev --set image.pullPolicy=Never --set "watchNamespaces={$NS}"
kubectl -n modelloop rollout status deploy/modelloop --timeout=180s

step "serving Deployment and the digits RetrainPolicy"
kubectl -n "$NS" apply -f hack/kind/serving.yaml
kubectl -n "$NS" apply -f examples/retrainpolicy-digits.yaml
kubectl -n "$NS" patch rp digits --type merge -p '{"spec":{
  "training":{"image":"modelloop/trainer:dev","imagePullPolicy":"Never","gpusPerWorker":0,"tolerations":[],
              "resources":{"requests":{"cpu":"1","memory":"1Gi"},"limits":{"memory":"4Gi"}},
              "hyperparameters":{"epochs":5}},
  "triggers":{"feedback":{"minSamples":50,"urgentSamples":100,"minInterval":"1m"}}}}'

step "seed the base dataset"
kubectl -n "$NS" delete job seed-dataset --ignore-not-found
kubectl -n "$NS" apply -f - <<'YAML'
apiVersion: batch/v1
kind: Job
metadata: {name: seed-dataset}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: seed
          image: modelloop/trainer:dev
          imagePullPolicy: Never
          command: ["modelloop-trainer", "seed-dataset", "--dataset", "datasets/digits"]
          env:
            - {name: MODELLOOP_BUCKET, value: models}
            - {name: MODELLOOP_S3_ENDPOINT, value: minio.modelloop.svc:9000}
            - {name: MODELLOOP_S3_SECURE, value: "false"}
            - name: AWS_ACCESS_KEY_ID
              valueFrom: {secretKeyRef: {name: modelloop-trainer-s3, key: accessKey}}
            - name: AWS_SECRET_ACCESS_KEY
              valueFrom: {secretKeyRef: {name: modelloop-trainer-s3, key: secretKey}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: ["ALL"]}}
          volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes: [{name: tmp, emptyDir: {}}]
YAML
kubectl -n "$NS" wait --for=condition=Complete job/seed-dataset --timeout=600s

step "first training (retrain-now), then wait for an Active version"
kubectl -n "$NS" annotate rp digits modelloop.dev/retrain-now="$(date -u +%Y-%m-%dT%H:%M:%SZ)" --overwrite
kubectl -n "$NS" wait rp/digits --for=jsonpath='{.status.activeVersion}'=v1 --timeout="$TIMEOUT"
kubectl -n "$NS" wait rp/digits --for=condition=Ready --timeout=10m
kubectl -n "$NS" rollout status deploy/digits --timeout=300s

step "reviewers post feedback; the corrections trigger a retrain"
kubectl -n "$NS" delete job reviewers --ignore-not-found
kubectl -n "$NS" apply -f - <<'YAML'
apiVersion: batch/v1
kind: Job
metadata: {name: reviewers}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: review
          image: modelloop/server:dev
          imagePullPolicy: Never
          command: ["python", "-c"]
          args:
            - |
              from modelloop_dev.loadgen import review
              r = review(["http://digits:8080"], 400)
              print(r)
              raise SystemExit(0 if r.corrections > 0 and r.failed == 0 else 1)
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: ["ALL"]}}
YAML
kubectl -n "$NS" wait --for=condition=Complete job/reviewers --timeout=300s
kubectl -n "$NS" wait rp/digits --for=jsonpath='{.status.latestVersion}'=v2 --timeout=10m
kubectl -n "$NS" wait mv/digits-v2 --for=jsonpath='{.status.phase}'=Active --timeout="$TIMEOUT" \
  || kubectl -n "$NS" get mv digits-v2 -o jsonpath='{.status.phase}{": "}{.status.message}{"\n"}'

step "done"
kubectl -n "$NS" get rp,mv
echo "kind-e2e: OK (set E2E_KEEP_CLUSTER=1 to keep the cluster)"
