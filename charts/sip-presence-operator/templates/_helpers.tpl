{{/*
Chart name, truncated to the 63 characters of a label value.
*/}}
{{- define "sip-presence-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart unless the release name already contains the chart name.
*/}}
{{- define "sip-presence-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Namespace of the operator's objects.
*/}}
{{- define "sip-presence-operator.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sip-presence-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "sip-presence-operator.labels" -}}
helm.sh/chart: {{ include "sip-presence-operator.chart" . }}
{{ include "sip-presence-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sip-presence
{{- end }}

{{/*
Selector labels (immutable in a Deployment: never add to them).
*/}}
{{- define "sip-presence-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sip-presence-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "sip-presence-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sip-presence-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image.
*/}}
{{- define "sip-presence-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Namespaces the operator watches (a list, as JSON): the release namespace by default.
*/}}
{{- define "sip-presence-operator.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson .Values.operator.watchNamespaces }}
{{- else }}
{{- toJson (list (include "sip-presence-operator.namespace" .)) }}
{{- end }}
{{- end }}

{{/*
The name of the CloudNativePG Cluster.
*/}}
{{- define "sip-presence-operator.cnpgName" -}}
{{- default (printf "%s-db" (include "sip-presence-operator.fullname" .)) .Values.postgresql.cnpg.name | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/*
Rules of the operator in the namespaces it watches: exactly
operator/presence_operator/builders/rbac.py OPERATOR_RULES (tests/test_chart.py compares).
*/}}
{{- define "sip-presence-operator.namespacedRules" -}}
# kopf: watch the custom resources, add its finalizer/annotations; status.
- apiGroups: [presence.example.org]
  resources: [presenceclusters]
  verbs: [get, list, watch, patch]
- apiGroups: [presence.example.org]
  resources: [presenceclusters/status]
  verbs: [get, patch]
# Rendered objects: created or patched, never deleted (owner references).
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, create, patch]
# The admin secret: read, or generated when absent.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Pod IPs and readiness: kopf's watch feeding the pods index (list, watch);
# the owner label moved in ha mode (patch).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# Failover, deferral and switchover events.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
Cluster-wide rules kopf itself needs: OPERATOR_CLUSTER_RULES.
*/}}
{{- define "sip-presence-operator.clusterRules" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
