{{/*
Expand the name of the chart.
*/}}
{{- define "mlflow-bluegreen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "mlflow-bluegreen.fullname" -}}
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
Create chart name and version as used by the chart label.
*/}}
{{- define "mlflow-bluegreen.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "mlflow-bluegreen.labels" -}}
helm.sh/chart: {{ include "mlflow-bluegreen.chart" . }}
{{ include "mlflow-bluegreen.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "mlflow-bluegreen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlflow-bluegreen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "mlflow-bluegreen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlflow-bluegreen.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the tracking token ("" when there is no token), and whether the chart
creates it.
*/}}
{{- define "mlflow-bluegreen.trackingSecretName" -}}
{{- if .Values.tracking.token.existingSecret }}
{{- .Values.tracking.token.existingSecret }}
{{- else if .Values.tracking.token.value }}
{{- printf "%s-tracking" (include "mlflow-bluegreen.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mlflow-bluegreen.trackingSecretKey" -}}
{{- if .Values.tracking.token.existingSecret }}
{{- .Values.tracking.token.existingSecretKey }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}

{{/*
"true" when a Service puts the admin port in front of clients other than the kubelet and
Prometheus.
*/}}
{{- define "mlflow-bluegreen.adminExposed" -}}
{{- if or .Values.admin.service.enabled .Values.metrics.serviceMonitor.enabled }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
The admin token's Secret: always there, because the admin port listens on the pod IP (for the
liveness probe and Prometheus) and the sidecar refuses to start there without a token.
*/}}
{{- define "mlflow-bluegreen.adminSecretName" -}}
{{- if .Values.admin.token.existingSecret }}
{{- .Values.admin.token.existingSecret }}
{{- else }}
{{- printf "%s-admin" (include "mlflow-bluegreen.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mlflow-bluegreen.adminSecretKey" -}}
{{- if .Values.admin.token.existingSecret }}
{{- .Values.admin.token.existingSecretKey }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}

{{/*
The Secret holding the webhook secret ("" when webhooks are not set up).
*/}}
{{- define "mlflow-bluegreen.webhookSecretName" -}}
{{- if .Values.webhook.secret.existingSecret }}
{{- .Values.webhook.secret.existingSecret }}
{{- else if .Values.webhook.secret.value }}
{{- printf "%s-webhook" (include "mlflow-bluegreen.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mlflow-bluegreen.webhookSecretKey" -}}
{{- if .Values.webhook.secret.existingSecret }}
{{- .Values.webhook.secret.existingSecretKey }}
{{- else }}
{{- "secret" }}
{{- end }}
{{- end }}

{{/*
Seconds the sidecar may need after SIGTERM: the shutdown delay, the drain of in-flight
requests, then up to 10 s (the sidecar's fixed grace) to stop its workers, plus a margin.
*/}}
{{- define "mlflow-bluegreen.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.shutdownDelay) (ceil .Values.drainTimeout) 10 (ceil .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
Startup probe attempts: enough for the startup timeout of a cold worker plus some slack for
resolving the URI and downloading the model.
*/}}
{{- define "mlflow-bluegreen.startupFailureThreshold" -}}
{{- $probe := .Values.probes.startup }}
{{- if $probe.failureThreshold }}
{{- $probe.failureThreshold | int }}
{{- else }}
{{- divf (addf .Values.model.startupTimeout $probe.slackSeconds) $probe.periodSeconds | ceil | int }}
{{- end }}
{{- end }}
