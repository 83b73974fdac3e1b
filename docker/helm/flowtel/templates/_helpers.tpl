{{- define "flowtel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flowtel.fullname" -}}
{{- if contains (include "flowtel.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "flowtel.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flowtel.labels" -}}
app.kubernetes.io/name: {{ include "flowtel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flowtel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowtel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flowtel.headersSecret" -}}
{{- default (printf "%s-otlp" (include "flowtel.fullname" .)) .Values.otlp.existingSecret -}}
{{- end -}}

{{- define "flowtel.resourceAttributes" -}}
{{- $attrs := list "k8s.node.name=$(K8S_NODE_NAME)" -}}
{{- range $k, $v := .Values.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end -}}
