{{/* Names, labels and the pieces every role's pod shares. */}}

{{- define "billing.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name prefix: the release name, with the chart's
name unless the release name contains it. */}}
{{- define "billing.fullname" -}}
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

{{- define "billing.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "billing.selectorLabels" -}}
app.kubernetes.io/name: {{ include "billing.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "billing.labels" -}}
helm.sh/chart: {{ include "billing.chart" . }}
{{ include "billing.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: billing
{{- end }}

{{/* A role's selector labels: (dict "root" $ "role" "api"). */}}
{{- define "billing.roleSelectorLabels" -}}
{{ include "billing.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "billing.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "billing.databaseSecretName" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "billing.fullname" .)) }}
{{- end }}

{{- define "billing.jwtSecretName" -}}
{{- .Values.jwt.existingSecret | default (printf "%s-jwt" (include "billing.fullname" .)) }}
{{- end }}

{{- define "billing.jwtUsesPublicKey" -}}
{{- if has .Values.jwt.algorithm (list "rs256" "es256") }}true{{ end }}
{{- end }}

{{- define "billing.jwtSecretKey" -}}
{{- if .Values.jwt.secretKey }}{{ .Values.jwt.secretKey }}
{{- else if include "billing.jwtUsesPublicKey" . }}public.pem
{{- else }}secret{{ end }}
{{- end }}

{{- define "billing.rateTableConfigMap" -}}
{{- if .Values.existingRateTableConfigMap }}{{ .Values.existingRateTableConfigMap }}
{{- else if .Values.rateTable }}{{ printf "%s-rates" (include "billing.fullname" .) }}
{{- end }}
{{- end }}

{{/* Settings that cannot work, refused before anything is applied. */}}
{{- define "billing.validate" -}}
{{- if not (or .Values.database.existingSecret .Values.database.url) }}
{{- fail "set database.existingSecret (a Secret holding the PostgreSQL URL) or database.url" }}
{{- end }}
{{- if not (has .Values.jwt.algorithm (list "hs256" "rs256" "es256")) }}
{{- fail "jwt.algorithm is hs256, rs256 or es256" }}
{{- end }}
{{- if not .Values.jwt.existingSecret }}
{{- if and (include "billing.jwtUsesPublicKey" .) (not .Values.jwt.publicKey) }}
{{- fail "set jwt.existingSecret (a Secret holding the PEM public key) or jwt.publicKey" }}
{{- end }}
{{- if and (not (include "billing.jwtUsesPublicKey" .)) (lt (len .Values.jwt.secret) 16) }}
{{- fail "set jwt.existingSecret (a Secret holding the HS256 secret) or jwt.secret (at least 16 bytes)" }}
{{- end }}
{{- end }}
{{- if and .Values.publisher.enabled (not .Values.kafka.brokers) }}
{{- fail "the publisher needs kafka.brokers (or set publisher.enabled=false)" }}
{{- end }}
{{- if not (has .Values.otel.protocol (list "grpc" "http/protobuf")) }}
{{- fail "otel.protocol is grpc or http/protobuf" }}
{{- end }}
{{- range $role := list "api" "projector" "publisher" "sweeper" }}
{{- $values := index $.Values $role }}
{{- range $probe := list $values.readinessProbe $values.livenessProbe }}
{{- if not (has $probe.type (list "grpc" "http")) }}
{{- fail (printf "%s: a probe's type is grpc or http" $role) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The database URL, from its Secret. */}}
{{- define "billing.databaseEnv" -}}
- name: BILLING_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "billing.databaseSecretName" . }}
      key: {{ .Values.database.secretKey }}
- name: BILLING_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{/* The environment of a serving role: (dict "root" $ "role" "api"). */}}
{{- define "billing.serveEnv" -}}
{{- $root := .root }}
{{- $values := index $root.Values .role }}
{{ include "billing.databaseEnv" $root }}
- name: BILLING_ROLES
  value: {{ .role | quote }}
- name: BILLING_DB_POOL_SIZE
  value: {{ $values.dbPoolSize | quote }}
- name: BILLING_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int $root.Values.metrics.port) | quote }}
{{- if include "billing.servesGrpc" . }}
- name: BILLING_GRPC_ADDR
  value: {{ printf "0.0.0.0:%d" (int $root.Values.grpcPort) | quote }}
{{- end }}
{{- if include "billing.rateTableConfigMap" $root }}
- name: BILLING_RATE_TABLE
  value: /etc/billing/rates/rates.toml
{{- end }}
{{- with $root.Values.otel }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "%s-%s" .serviceNamePrefix $.role | quote }}
{{- if .sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
{{- end }}
{{- if .headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .headersSecret.name }}
      key: {{ .headersSecret.key }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether a role listens on the gRPC port: the api always, another role
when one of its probes asks gRPC health. (dict "root" $ "role" "api") */}}
{{- define "billing.servesGrpc" -}}
{{- $values := index .root.Values .role }}
{{- if or (eq .role "api") (eq $values.readinessProbe.type "grpc") (eq $values.livenessProbe.type "grpc") }}true{{ end }}
{{- end }}

{{/* A probe: (dict "root" $ "probe" .Values.api.readinessProbe). */}}
{{- define "billing.probe" -}}
{{- if eq .probe.type "grpc" }}
grpc:
  port: {{ .root.Values.grpcPort }}
  {{- with .probe.service }}
  service: {{ . | quote }}
  {{- end }}
{{- else }}
httpGet:
  path: /metrics
  port: metrics
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* What every pod shares: pull secrets, service account, security context,
scheduling. */}}
{{- define "billing.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
