{{- define "pivot.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pivot.operatorName" -}}
{{- printf "%s-operator" (include "pivot.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pivot.serviceAccountName" -}}
{{- default (include "pivot.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "pivot.selectorLabels" -}}
app.kubernetes.io/name: pivot-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pivot.labels" -}}
{{ include "pivot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: pivot
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
