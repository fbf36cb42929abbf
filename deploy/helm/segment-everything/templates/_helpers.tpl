{{/* Chart name, truncated to the 63 characters Kubernetes allows in names and labels. */}}
{{- define "segment-everything.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of every object. */}}
{{- define "segment-everything.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "segment-everything.selectorLabels" -}}
app.kubernetes.io/name: {{ include "segment-everything.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "segment-everything.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "segment-everything.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "segment-everything.engineCacheClaim" -}}
{{- default (printf "%s-engines" (include "segment-everything.fullname" .)) .Values.engineCache.existingClaim }}
{{- end }}
