{{/*
Development servers (dev-nats.yaml, dev-postgresql.yaml): names, the URL the operator and the
bots use, and the dev database password (kept across upgrades).
*/}}
{{- define "kubetrade.devNatsName" -}}
{{- printf "%s-nats" (include "kubetrade.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetrade.devPostgresName" -}}
{{- printf "%s-postgresql" (include "kubetrade.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The NATS URL of the operator and the bots: the development server's when it is on. */}}
{{- define "kubetrade.natsUrl" -}}
{{- if .Values.nats.dev.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "kubetrade.devNatsName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* The dev database password: the one already installed (upgrades keep it), else a new one. */}}
{{- define "kubetrade.devPostgresPassword" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "kubetrade.devPostgresName" .) -}}
{{- if and $existing (index $existing "data" "password") -}}
{{- index $existing "data" "password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* The labels of one development server's objects. */}}
{{- define "kubetrade.devLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: dev-{{ .name }}
app.kubernetes.io/part-of: kubetrade
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "kubetrade.devSelector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: dev-{{ .name }}
{{- end -}}

{{/* A dev server's data volume: a claim template when persistent (see the StatefulSets). */}}
{{- define "kubetrade.devClaimTemplate" -}}
- metadata:
    name: data
  spec:
    accessModes: [ReadWriteOnce]
    {{- with .persistence.storageClass }}
    storageClassName: {{ . | quote }}
    {{- end }}
    resources:
      requests:
        storage: {{ .persistence.size | quote }}
{{- end -}}
