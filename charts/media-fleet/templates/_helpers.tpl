{{/* Names and labels shared by the chart's templates. */}}

{{- define "media-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-scoped base name, e.g. "media-fleet" or "<release>-media-fleet". */}}
{{- define "media-fleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "media-fleet.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "media-fleet.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "media-fleet.operatorName" -}}
{{- printf "%s-operator" (include "media-fleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "media-fleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: media-fleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "media-fleet.operatorSelector" -}}
app.kubernetes.io/name: media-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "media-fleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "media-fleet.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "media-fleet.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "media-fleet.nodeImage" -}}
{{- printf "%s:%s" .Values.mediaNode.image.repository (default .Chart.AppVersion .Values.mediaNode.image.tag) }}
{{- end }}
