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

{{/*
The probe command (python -m mobilesamv2.runner.probe): real inferences through every model within a deadline.
Liveness counts a full queue as alive, unless it lasts maxOverloaded probes in a row (hung instances fill it).
*/}}
{{- define "segment-everything.probeCommand" -}}
{{- $inference := .root.Values.probes.inference -}}
- python3
- -m
- mobilesamv2.runner.probe
- --url=127.0.0.1:8000
- --timeout={{ $inference.deadlineSeconds }}
{{- if not $inference.interactive }}
- --no-interactive
{{- end }}
{{- if .liveness }}
- --overloaded-ok
- --max-overloaded={{ $inference.maxOverloaded }}
- --state-file=/tmp/mobilesamv2/liveness-overloaded
{{- end }}
{{- end }}

{{/* The Secret holding the admin key of the management APIs (created by the chart unless existingSecret). */}}
{{- define "segment-everything.adminKeySecret" -}}
{{- default (printf "%s-admin-key" (include "segment-everything.fullname" .)) .Values.security.adminKey.existingSecret }}
{{- end }}

{{/* Where the entrypoint finds the admin key and the gRPC TLS files. */}}
{{- define "segment-everything.adminKeyDir" -}}/var/run/secrets/mobilesamv2/admin{{- end }}
{{- define "segment-everything.grpcTlsDir" -}}/var/run/secrets/mobilesamv2/grpc-tls{{- end }}
