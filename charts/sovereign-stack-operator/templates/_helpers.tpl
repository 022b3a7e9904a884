{{/*
Names and labels of every object of the chart, in one place.
*/}}

{{- define "sovereign.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "sovereign.fullname" -}}
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

{{- define "sovereign.agentName" -}}
{{- printf "%s-gpu-agent" (include "sovereign.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sovereign.operatorServiceAccount" -}}
{{- default (include "sovereign.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "sovereign.agentServiceAccount" -}}
{{- default (include "sovereign.agentName" .) .Values.agent.serviceAccount.name }}
{{- end }}

{{- define "sovereign.peeringName" -}}
{{- default (include "sovereign.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "sovereign.webhookSecret" -}}
{{- default (printf "%s-webhook-tls" (include "sovereign.fullname" .)) .Values.webhook.certificate.secretName }}
{{- end }}

{{/* The image reference; a digest, when given, pins it. */}}
{{- define "sovereign.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Labels of every object; `component` is operator, gpu-agent or monitoring. */}}
{{- define "sovereign.labels" -}}
{{- $root := .root -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sovereign.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: sovereign-stack
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels that select the pods of a component; never change them (selectors are immutable). */}}
{{- define "sovereign.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sovereign.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Prometheus' job label of a component's metrics (ServiceMonitor/PodMonitor jobLabel), fixed so
that files/alerts.yaml can name it whatever the release is called. */}}
{{- define "sovereign.metricsJobLabel" -}}
sovereign.ai/metrics-job
{{- end }}
