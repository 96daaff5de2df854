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

{{/* Whether there is a static key for tokens without a `kid` (the secret or
the public key of jwt.*): from an existing Secret (unless only publicKeys are
named, without secretKey), or given inline. Without one, only publicKeys
and/or the JWKS verify. */}}
{{- define "billing.jwtHasKey" -}}
{{- $jwt := .Values.jwt }}
{{- if $jwt.existingSecret }}
{{- if or $jwt.secretKey (not $jwt.publicKeys) }}true{{ end }}
{{- else if include "billing.jwtUsesPublicKey" . }}
{{- if $jwt.publicKey }}true{{ end }}
{{- else if $jwt.secret }}true{{ end }}
{{- end }}

{{/* Whether the api mounts the jwt Secret. */}}
{{- define "billing.jwtMountsSecret" -}}
{{- if or (include "billing.jwtHasKey" .) .Values.jwt.publicKeys }}true{{ end }}
{{- end }}

{{/* The gRPC TLS Secret: cert-manager's, or the existing one. */}}
{{- define "billing.grpcTlsSecretName" -}}
{{- if .Values.tls.grpc.certManager.enabled }}
{{- printf "%s-grpc-tls" (include "billing.fullname" .) }}
{{- else }}
{{- .Values.tls.grpc.existingSecret }}
{{- end }}
{{- end }}

{{/* Whether clients of the gRPC port must present a certificate. */}}
{{- define "billing.grpcMutualTls" -}}
{{- with .Values.tls.grpc.clientCA }}{{ if or .secret .configMap }}true{{ end }}{{ end }}
{{- end }}

{{/* The name the probe expects in the server's certificate. */}}
{{- define "billing.grpcTlsServerName" -}}
{{- .Values.tls.grpc.serverName | default (printf "%s.%s.svc" (include "billing.fullname" .) .Release.Namespace) }}
{{- end }}

{{/* Whether the database's TLS files are mounted. */}}
{{- define "billing.databaseTls" -}}
{{- with .Values.database.tls }}{{ if or .caSecret .caConfigMap .clientCertSecret }}true{{ end }}{{ end }}
{{- end }}

{{/* Whether the publisher mounts /etc/billing/kafka (the SASL password, the
brokers' CA). */}}
{{- define "billing.kafkaFiles" -}}
{{- if or (include "billing.kafkaSasl" .) .Values.kafka.tls.caSecret .Values.kafka.tls.caConfigMap }}true{{ end }}
{{- end }}

{{- define "billing.kafkaSasl" -}}
{{- if hasPrefix "sasl_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{/* One file of a projected volume, from a Secret or else a ConfigMap:
(dict "secret" NAME "configMap" NAME "key" KEY "path" PATH). Nothing when
both names are empty. */}}
{{- define "billing.fileSource" -}}
{{- if .secret }}
- secret:
    name: {{ .secret }}
    items:
      - key: {{ .key }}
        path: {{ .path }}
{{- else if .configMap }}
- configMap:
    name: {{ .configMap }}
    items:
      - key: {{ .key }}
        path: {{ .path }}
{{- end }}
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
{{- with .Values.jwt }}
{{- if not (or .existingSecret .jwksUrl) }}
{{- if and (include "billing.jwtUsesPublicKey" $) (not .publicKey) }}
{{- fail "set jwt.existingSecret (a Secret holding the PEM public key), jwt.publicKey or jwt.jwksUrl" }}
{{- end }}
{{- if and (not (include "billing.jwtUsesPublicKey" $)) (not .secret) }}
{{- fail "set jwt.existingSecret (a Secret holding the HS256 secret), jwt.secret (at least 16 bytes) or jwt.jwksUrl" }}
{{- end }}
{{- end }}
{{- if and (not .existingSecret) (not (include "billing.jwtUsesPublicKey" $)) .secret (lt (len .secret) 16) }}
{{- fail "jwt.secret: at least 16 bytes" }}
{{- end }}
{{- if and .publicKeys (not .existingSecret) }}
{{- fail "jwt.publicKeys names keys of jwt.existingSecret: set it" }}
{{- end }}
{{- if and (hasPrefix "http://" .jwksUrl) (not .jwksAllowHttp) }}
{{- fail "jwt.jwksUrl is plain http: use https, or set jwt.jwksAllowHttp=true for an identity provider inside the cluster" }}
{{- end }}
{{- if and .jwksCA.secret .jwksCA.configMap }}
{{- fail "jwt.jwksCA: a secret or a configMap, not both" }}
{{- end }}
{{- end }}
{{- if and .Values.publisher.enabled (not .Values.kafka.brokers) }}
{{- fail "the publisher needs kafka.brokers (or set publisher.enabled=false)" }}
{{- end }}
{{- with .Values.kafka }}
{{- if not (has .securityProtocol (list "plaintext" "ssl" "sasl_plaintext" "sasl_ssl")) }}
{{- fail "kafka.securityProtocol is plaintext, ssl, sasl_plaintext or sasl_ssl" }}
{{- end }}
{{- if and (include "billing.kafkaSasl" $) (not (and .sasl.username .sasl.existingSecret)) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.username and kafka.sasl.existingSecret (the password)" .securityProtocol) }}
{{- end }}
{{- if and .tls.caSecret .tls.caConfigMap }}
{{- fail "kafka.tls: caSecret or caConfigMap, not both" }}
{{- end }}
{{- if and (or .tls.caSecret .tls.caConfigMap) (not (has .securityProtocol (list "ssl" "sasl_ssl"))) }}
{{- fail "kafka.tls names the brokers' CA: kafka.securityProtocol is then ssl or sasl_ssl" }}
{{- end }}
{{- end }}
{{- with .Values.database.tls }}
{{- if and .caSecret .caConfigMap }}
{{- fail "database.tls: caSecret or caConfigMap, not both" }}
{{- end }}
{{- end }}
{{- with .Values.tls.grpc }}
{{- if .enabled }}
{{- if eq (not .existingSecret) (not .certManager.enabled) }}
{{- fail "tls.grpc.enabled: set tls.grpc.existingSecret (a kubernetes.io/tls Secret) or tls.grpc.certManager.enabled, one of the two" }}
{{- end }}
{{- if and .certManager.enabled (not .certManager.issuerRef.name) }}
{{- fail "tls.grpc.certManager: set issuerRef.name (the Issuer or ClusterIssuer)" }}
{{- end }}
{{- else if or .certManager.enabled .clientCA.secret .clientCA.configMap }}
{{- fail "tls.grpc.certManager and tls.grpc.clientCA need tls.grpc.enabled=true" }}
{{- end }}
{{- if and .clientCA.secret .clientCA.configMap }}
{{- fail "tls.grpc.clientCA: a secret or a configMap, not both" }}
{{- end }}
{{- end }}
{{- if not (has .Values.otel.protocol (list "grpc" "http/protobuf")) }}
{{- fail "otel.protocol is grpc or http/protobuf" }}
{{- end }}
{{- range $role := list "api" "projector" "publisher" "sweeper" "dispatcher" }}
{{- $values := index $.Values $role }}
{{- range $probe := list $values.readinessProbe $values.livenessProbe }}
{{- if not (has $probe.type (list "grpc" "http")) }}
{{- fail (printf "%s: a probe's type is grpc or http" $role) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The database URL, a file of its Secret (the migration Job and every
role). */}}
{{- define "billing.databaseEnv" -}}
- name: BILLING_DATABASE_URL_FILE
  value: /etc/billing/database/url
- name: BILLING_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{- define "billing.databaseVolumeMounts" -}}
- name: database
  mountPath: /etc/billing/database
  readOnly: true
{{- if include "billing.databaseTls" . }}
- name: db-tls
  mountPath: /etc/billing/db-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The URL's Secret, and the files the URL's sslrootcert, sslcert and
sslkey name (database.tls). */}}
{{- define "billing.databaseVolumes" -}}
- name: database
  secret:
    secretName: {{ include "billing.databaseSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.database.secretKey }}
        path: url
{{- if include "billing.databaseTls" . }}
{{- with .Values.database.tls }}
- name: db-tls
  projected:
    defaultMode: 0440
    sources:
      {{- include "billing.fileSource" (dict "secret" .caSecret "configMap" .caConfigMap "key" .caKey "path" "ca.crt") | trim | nindent 6 }}
      {{- with .clientCertSecret }}
      - secret:
          name: {{ . }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- end }}
{{- end }}
{{- end }}
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
{{- if $root.Values.tls.grpc.enabled }}
- name: BILLING_TLS_CERT
  value: /etc/billing/grpc-tls/tls.crt
- name: BILLING_TLS_KEY
  value: /etc/billing/grpc-tls/tls.key
{{- if include "billing.grpcMutualTls" $root }}
- name: BILLING_TLS_CLIENT_CA
  value: /etc/billing/grpc-tls/client-ca.crt
{{- end }}
{{- if not (kindIs "invalid" $root.Values.tls.grpc.reloadIntervalMs) }}
- name: BILLING_TLS_RELOAD_INTERVAL_MS
  value: {{ $root.Values.tls.grpc.reloadIntervalMs | quote }}
{{- end }}
{{- end }}
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

{{/* A probe: (dict "root" $ "probe" .Values.api.readinessProbe). gRPC
health over TLS is an exec probe running `billing health` in the container:
the kubelet's own gRPC probe speaks plaintext only. */}}
{{- define "billing.probe" -}}
{{- if and (eq .probe.type "grpc") .root.Values.tls.grpc.enabled }}
{{- $tls := .root.Values.tls.grpc }}
exec:
  command:
    - /usr/local/bin/billing
    - health
    - --addr
    - {{ printf "https://127.0.0.1:%d" (int .root.Values.grpcPort) }}
    - --tls-server-name
    - {{ include "billing.grpcTlsServerName" .root | quote }}
    {{- if $tls.caKey }}
    - --ca
    - /etc/billing/grpc-tls/ca.crt
    {{- end }}
    {{- if include "billing.grpcMutualTls" .root }}
    {{- if $tls.clientCA.probeCertSecret }}
    - --cert
    - /etc/billing/grpc-tls/probe-client.crt
    - --key
    - /etc/billing/grpc-tls/probe-client.key
    {{- else }}
    - --cert
    - /etc/billing/grpc-tls/tls.crt
    - --key
    - /etc/billing/grpc-tls/tls.key
    {{- end }}
    {{- end }}
    {{- with .probe.service }}
    - --service
    - {{ . | quote }}
    {{- end }}
    - --timeout-seconds
    - {{ .probe.timeoutSeconds | quote }}
{{- else if eq .probe.type "grpc" }}
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

{{/* The gRPC TLS files of a role listening on the gRPC port: the key pair,
the CA the probe trusts, the client CA and the probe's client certificate
(mutual TLS). One projected volume, so that they share a directory; Secret
and ConfigMap volumes (projected ones too) follow their objects' updates,
which the binary reloads. */}}
{{- define "billing.grpcTlsVolume" -}}
{{- $tls := .Values.tls.grpc }}
- name: grpc-tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "billing.grpcTlsSecretName" . }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
            {{- with $tls.caKey }}
            - key: {{ . }}
              path: ca.crt
            {{- end }}
      {{- include "billing.fileSource" (dict "secret" $tls.clientCA.secret "configMap" $tls.clientCA.configMap "key" $tls.clientCA.key "path" "client-ca.crt") | trim | nindent 6 }}
      {{- if and (include "billing.grpcMutualTls" .) $tls.clientCA.probeCertSecret }}
      - secret:
          name: {{ $tls.clientCA.probeCertSecret }}
          items:
            - key: tls.crt
              path: probe-client.crt
            - key: tls.key
              path: probe-client.key
      {{- end }}
{{- end }}

{{/* kafka.config as BILLING_KAFKA_CONFIG: key=value,... in key order, a
comma inside a value as \, */}}
{{- define "billing.kafkaConfig" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key (toString $value | replace "," "\\,")) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
