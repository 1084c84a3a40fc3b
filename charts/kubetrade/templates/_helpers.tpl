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
