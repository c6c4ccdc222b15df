{{- define "vizora-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vizora-gateway.fullname" -}}
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

{{- define "vizora-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vizora-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vizora-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vizora-gateway.labels" -}}
helm.sh/chart: {{ include "vizora-gateway.chart" . }}
{{ include "vizora-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vizora
{{- end }}

{{- define "vizora-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vizora-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vizora-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the pods read: the chart's own, or existingSecret. */}}
{{- define "vizora-gateway.secretName" -}}
{{- default (include "vizora-gateway.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The Secret the migration hook reads: it runs before the release's own Secret exists. */}}
{{- define "vizora-gateway.migrationSecretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- printf "%s-migration" (include "vizora-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Seconds the kubelet waits after preStop + SIGTERM: preStop pause + drain + margin. */}}
{{- define "vizora-gateway.terminationGracePeriodSeconds" -}}
{{- add .Values.lifecycle.preStopSeconds .Values.config.drainSeconds .Values.lifecycle.terminationGraceMarginSeconds }}
{{- end }}

{{/* ingress-nginx body size: base64 of SCREENSHOT_MAX_BYTES (4/3), the gateway's 16 KiB
     margin and 64 KiB for the polling envelope, in KiB rounded up. */}}
{{- define "vizora-gateway.ingressBodySize" -}}
{{- $bytes := add (div (mul (int64 .Values.config.screenshotMaxBytes) 4) 3) 16384 65536 }}
{{- printf "%dk" (add (div $bytes 1024) 1) }}
{{- end }}

{{/* Secret keys: name, the values key, and whether the gateway runs without it. */}}
{{- define "vizora-gateway.secretKeys" -}}
DEVICE_JWT_SECRET: deviceJwtSecret
JWT_SECRET: jwtSecret
INTERNAL_API_SECRET: internalApiSecret
DATABASE_URL: databaseUrl
REDIS_URL: redisUrl
METRICS_TOKEN: metricsToken
MINIO_ACCESS_KEY: minioAccessKey
MINIO_SECRET_KEY: minioSecretKey
{{- end }}

{{- define "vizora-gateway.requiredSecretKeys" -}}
DEVICE_JWT_SECRET JWT_SECRET INTERNAL_API_SECRET DATABASE_URL
{{- end }}

{{/* Fills empty generated secrets once per render (the Secret, its hook copy and the checksum
     must agree): the value already in the cluster on upgrade, else a random one. */}}
{{- define "vizora-gateway.fillSecrets" -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "vizora-gateway.fullname" .)) | default dict }}
{{- $data := $existing.data | default dict }}
{{- range $env, $key := dict "DEVICE_JWT_SECRET" "deviceJwtSecret" "JWT_SECRET" "jwtSecret" "INTERNAL_API_SECRET" "internalApiSecret" "METRICS_TOKEN" "metricsToken" }}
{{- if not (index $.Values.secrets $key) }}
{{- $value := "" }}
{{- if hasKey $data $env }}
{{- $value = index $data $env | b64dec }}
{{- else }}
{{- $value = randAlphaNum 48 }}
{{- $_ := set $.Values.secrets (printf "%sGenerated" $key) true }}
{{- end }}
{{- $_ := set $.Values.secrets $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* Secret data shared by the release Secret and the migration hook's copy. */}}
{{- define "vizora-gateway.secretData" -}}
{{- include "vizora-gateway.fillSecrets" . }}
{{- $required := splitList " " (include "vizora-gateway.requiredSecretKeys" .) }}
{{- range $env, $key := include "vizora-gateway.secretKeys" . | fromYaml }}
{{- $value := index $.Values.secrets $key }}
{{- if has $env $required }}
{{ $env }}: {{ required (printf "secrets.%s is required (or set existingSecret)" $key) $value | b64enc | quote }}
{{- else if $value }}
{{ $env }}: {{ $value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* env entries reading every secret key (optional ones may be absent from the Secret). */}}
{{- define "vizora-gateway.secretEnv" -}}
{{- $required := splitList " " (include "vizora-gateway.requiredSecretKeys" .root) }}
{{- range $env, $key := include "vizora-gateway.secretKeys" .root | fromYaml }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $.secretName }}
      key: {{ $env }}
      {{- if not (has $env $required) }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
