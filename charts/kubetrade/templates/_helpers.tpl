{{/* The release's full name: the release name, or <release>-kubetrade when it lacks "kubetrade". */}}
{{- define "kubetrade.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetrade.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetrade.labels" -}}
{{ include "kubetrade.selectorLabels" . }}
app.kubernetes.io/part-of: kubetrade
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetrade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetrade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubetrade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kubetrade.botImage" -}}
{{- if .Values.bots.image.repository -}}
{{- printf "%s:%s" .Values.bots.image.repository (default .Chart.AppVersion .Values.bots.image.tag) -}}
{{- else -}}
{{- include "kubetrade.image" . -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces the operator watches and holds rights in, space-separated; empty when it is
cluster-wide. Refuses a namespaced install without namespaces instead of silently widening it.
*/}}
{{- define "kubetrade.watchNamespaces" -}}
{{- if not .Values.operator.clusterWide -}}
{{- if not .Values.operator.watchNamespaces -}}
{{- fail "operator.watchNamespaces is empty: list the namespaces that hold bots (e.g. --set operator.watchNamespaces={bots}), or set operator.clusterWide=true to manage every namespace" -}}
{{- end -}}
{{- join " " .Values.operator.watchNamespaces -}}
{{- end -}}
{{- end -}}

{{/* The operator's RBAC rules, the same for its Roles and its ClusterRole (see rbac.yaml). */}}
{{- define "kubetrade.operatorRules" -}}
- apiGroups: [kubetrade.io]
  resources: [tradingbots]
  verbs: [list, watch, patch]
- apiGroups: [kubetrade.io]
  resources: [tradingbots/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: [kubetrade.io]
  resources: [tradingbots/finalizers]
  verbs: [update]
# create: a server-side apply that creates the object is authorized as create.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* The job label of the operator's and the bots' scraped series (monitoring.yaml, rules). */}}
{{- define "kubetrade.operatorJob" -}}
{{- printf "%s-operator" (include "kubetrade.fullname" .) -}}
{{- end -}}

{{- define "kubetrade.botsJob" -}}
{{- printf "%s-bots" (include "kubetrade.fullname" .) -}}
{{- end -}}

{{/* Labels of the Prometheus Operator objects: the chart's and monitoring.labels. */}}
{{- define "kubetrade.monitoringLabels" -}}
{{ include "kubetrade.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}
