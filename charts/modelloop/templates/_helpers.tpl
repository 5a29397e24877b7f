{{/* The chart's name, or nameOverride: the app.kubernetes.io/name label. */}}
{{- define "modelloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object's name: fullnameOverride, or <release>-<name> (just <release> when it already contains the name). */}}
{{- define "modelloop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "modelloop.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "modelloop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "modelloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of one object of a component: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "modelloop.componentLabels" -}}
{{ include "modelloop.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "modelloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelloop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs in every namespace it watches. */}}
{{- define "modelloop.namespacedRules" -}}
- apiGroups: ["modelloop.dev"]
  resources: ["retrainpolicies", "modelversions"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["modelloop.dev"]
  resources: ["retrainpolicies/status", "modelversions/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete"]
# Kueue's Workloads, read only: why a queued (spec.training.queueName) Job has not started yet.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- /* get only: the CA bundle a policy names in spec.storage.tls.caBundle */}}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/*
Alerts whose threshold `alerts.rules.<alert>.threshold` replaces: `expr` is the comparison as it
stands, once, in files/alerts.yaml (tests/integration/test_chart.py checks); `text` is where the
description says the number, rewritten in `unit` (percent: 0.85 -> 85%, ms: 0.5 -> 500ms).
*/}}
{{- define "modelloop.alertThresholds" -}}
ModelloopReconcileErrors: {expr: "> 0.05"}
ModelloopTrainingFailing: {expr: ">= 3"}
ModelloopVerificationRejecting: {expr: ">= 3"}
ModelloopModelStale: {expr: "> 1000"}
ModelloopLiveAccuracyLow: {expr: "< 0.85", text: "less than 85%", prefix: "less than ", unit: percent}
ModelloopServingErrorRateHigh: {expr: "> 0.05", text: "More than 5%", prefix: "More than ", unit: percent}
ModelloopServingLatencyHigh: {expr: "> 0.5", text: "above 500ms", prefix: "above ", unit: ms}
ModelloopFeedbackBacklog: {expr: "> 1000", text: "more than 1000 feedback", prefix: "more than ", suffix: " feedback"}
{{- end -}}

{{- /*
The namespaces the operator watches, as a JSON list; [] means every namespace (clusterWide).
Namespaced by default: watchNamespaces, or the release's own namespace when that is empty.
*/ -}}
{{- define "modelloop.watchNamespaces" -}}
{{- if .Values.clusterWide -}}
{{- if .Values.watchNamespaces -}}
{{- fail "clusterWide=true watches every namespace: leave watchNamespaces empty, or set clusterWide=false to watch only those" -}}
{{- end -}}
[]
{{- else if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}
