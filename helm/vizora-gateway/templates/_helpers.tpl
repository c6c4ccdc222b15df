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

{{/* The release's pods, whatever their role. */}}
{{- define "vizora-gateway.instanceLabels" -}}
app.kubernetes.io/name: {{ include "vizora-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The gateway pods: the Deployment's, Service's, PDB's, spread's and NetworkPolicy's
     selector. The component label keeps the migration Job's pods (component: migration) out of
     all of them. A Deployment's selector is immutable: see the chart README, "Upgrading". */}}
{{- define "vizora-gateway.selectorLabels" -}}
{{ include "vizora-gateway.instanceLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Labels of every object, without the component. */}}
{{- define "vizora-gateway.commonLabels" -}}
helm.sh/chart: {{ include "vizora-gateway.chart" . }}
{{ include "vizora-gateway.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vizora
{{- end }}

{{/* Labels of the gateway's objects. */}}
{{- define "vizora-gateway.labels" -}}
{{ include "vizora-gateway.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Labels of the migration hook's objects: never selected as gateway pods. */}}
{{- define "vizora-gateway.migrationLabels" -}}
{{ include "vizora-gateway.commonLabels" . }}
app.kubernetes.io/component: migration
{{- end }}

{{- define "vizora-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vizora-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is pinned (the tag is then ignored), else repository:tag. */}}
{{- define "vizora-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
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

{{/* The migration hook's ServiceAccount: an existing one (serviceAccount.create=false) is the
     Deployment's; a chart-made one gets a hook copy, since the hook runs before it exists. */}}
{{- define "vizora-gateway.migrationServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-migrate" (include "vizora-gateway.serviceAccountName" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "vizora-gateway.serviceAccountName" . }}
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
REDIS_USERNAME: redisUsername
REDIS_PASSWORD: redisPassword
REDIS_SENTINEL_USERNAME: redisSentinelUsername
REDIS_SENTINEL_PASSWORD: redisSentinelPassword
METRICS_TOKEN: metricsToken
MINIO_ACCESS_KEY: minioAccessKey
MINIO_SECRET_KEY: minioSecretKey
{{- end }}

{{- define "vizora-gateway.requiredSecretKeys" -}}
DEVICE_JWT_SECRET JWT_SECRET INTERNAL_API_SECRET DATABASE_URL
{{- end }}

{{/* Whether the secret variable `.env` is passed to the gateway: REDIS_URL only without
     Sentinel or Cluster, the data nodes' credentials (REDIS_USERNAME, REDIS_PASSWORD) only with
     one of them, the Sentinel credentials only with Sentinel (the gateway refuses any other
     mix), and none that extraEnv sets itself (its entry, e.g. a valueFrom of another Secret,
     wins). */}}
{{- define "vizora-gateway.secretApplies" -}}
{{- $sentinel := not (empty .root.Values.config.redisSentinels) }}
{{- $cluster := not (empty .root.Values.redis.clusterNodes) }}
{{- if hasKey (.root.Values.extraEnv | default dict) .env }}
{{- else if eq .env "REDIS_URL" }}{{ if not (or $sentinel $cluster) }}true{{ end }}
{{- else if has .env (list "REDIS_USERNAME" "REDIS_PASSWORD") }}{{ if or $sentinel $cluster }}true{{ end }}
{{- else if hasPrefix "REDIS_" .env }}{{ if $sentinel }}true{{ end }}
{{- else }}true
{{- end }}
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
{{- else if and $value (or (ne $env "REDIS_URL") (not (or $.Values.config.redisSentinels $.Values.redis.clusterNodes))) }}
{{ $env }}: {{ $value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* env entries reading every secret key (optional ones may be absent from the Secret). */}}
{{- define "vizora-gateway.secretEnv" -}}
{{- $required := splitList " " (include "vizora-gateway.requiredSecretKeys" .root) }}
{{- range $env, $key := include "vizora-gateway.secretKeys" .root | fromYaml }}
{{- if include "vizora-gateway.secretApplies" (dict "root" $.root "env" $env) }}
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
{{- end }}

{{/* extraEnv as container env entries: `NAME: value`, or `NAME: {valueFrom: …}`. Never in the
     ConfigMap, so a value can come from a Secret. */}}
{{- define "vizora-gateway.extraEnv" -}}
{{- range $name, $v := .Values.extraEnv }}
- name: {{ $name }}
{{- if kindIs "map" $v }}
  {{- toYaml $v | nindent 2 }}
{{- else }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* A Kubernetes memory quantity in MiB (float): plain bytes or a binary/decimal suffix. */}}
{{- define "vizora-gateway.mebibytes" -}}
{{- $q := toString . | trim }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q) }}
{{- fail (printf "resources.limits.memory=%s: not a memory quantity the chart reads (plain bytes, or a Ki/Mi/Gi/Ti/k/M/G/T suffix)" $q) }}
{{- end }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $num $q }}
{{- $bytes := dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 }}
{{- divf (mulf (float64 $num) (index $bytes $unit)) 1048576.0 }}
{{- end }}

{{/* The memory rule: a pod's memory limit must hold config.maxConnections sockets at
     config.memoryPerConnectionKiB each plus config.memoryBaseMiB. Rendering fails otherwise:
     lowering MAX_CONNECTIONS behind the operator's back would hide the sizing error and move
     load onto the other replicas unexpectedly; an OOM kill skips the drain and moves all of it
     at once. Without a memory limit there is nothing to check. */}}
{{- define "vizora-gateway.checkMemory" -}}
{{- $limit := dig "limits" "memory" "" (.Values.resources | default dict) }}
{{- if $limit }}
{{- $c := .Values.config }}
{{- $limitMiB := include "vizora-gateway.mebibytes" $limit | float64 }}
{{- $socketsMiB := divf (mulf (float64 $c.maxConnections) (float64 $c.memoryPerConnectionKiB)) 1024.0 }}
{{- $needMiB := addf $socketsMiB (float64 $c.memoryBaseMiB) }}
{{- if gt $needMiB $limitMiB }}
{{- $fit := floor (divf (mulf (subf $limitMiB (float64 $c.memoryBaseMiB)) 1024.0) (float64 $c.memoryPerConnectionKiB)) }}
{{- fail (printf "config.maxConnections=%v does not fit resources.limits.memory=%v: %v sockets x %v KiB (config.memoryPerConnectionKiB) + %v MiB (config.memoryBaseMiB) = %.1f MiB, above the limit's %.1f MiB. Raise resources.limits.memory or lower config.maxConnections (at most %v fit). The chart refuses rather than lowering the cap for you: a silently lower cap hides the sizing error and moves load onto the other replicas." $c.maxConnections $limit $c.maxConnections $c.memoryPerConnectionKiB $c.memoryBaseMiB $needMiB $limitMiB (max (int64 $fit) 0)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Render-time checks of values that the schema cannot express. */}}
{{- define "vizora-gateway.validate" -}}
{{- include "vizora-gateway.checkMemory" . }}
{{- $c := .Values.config }}
{{- if and $c.internalPort (eq (int $c.internalPort) (int $c.port)) }}
{{- fail (printf "config.internalPort=%v must differ from config.port" $c.internalPort) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetSocketsPerPod (gt (int .Values.autoscaling.targetSocketsPerPod) (int $c.maxConnections)) }}
{{- fail (printf "autoscaling.targetSocketsPerPod=%v is above config.maxConnections=%v: the HPA would never see it" .Values.autoscaling.targetSocketsPerPod $c.maxConnections) }}
{{- end }}
{{- $cluster := .Values.redis.clusterNodes }}
{{- if and $cluster $c.redisSentinels }}
{{- fail "redis.clusterNodes and config.redisSentinels are both set: the gateway uses one Redis (REDIS_CLUSTER_NODES for a Redis Cluster, or REDIS_SENTINELS for Sentinel); set only one of them" }}
{{- end }}
{{- if and (not $cluster) (ne (toString .Values.redis.clusterTls) "false") }}
{{- fail (printf "redis.clusterTls=%v is only used with redis.clusterNodes" .Values.redis.clusterTls) }}
{{- end }}
{{- if not $c.redisSentinels }}
{{- range $key := list "redisUsername" "redisPassword" "redisSentinelUsername" "redisSentinelPassword" }}
{{- $dataNodes := has $key (list "redisUsername" "redisPassword") }}
{{- if and (index $.Values.secrets $key) (not (and $dataNodes $cluster)) }}
{{- if $cluster }}
{{- fail (printf "secrets.%s is only used with config.redisSentinels; a Redis Cluster takes secrets.redisUsername and secrets.redisPassword" $key) }}
{{- else }}
{{- fail (printf "secrets.%s is only used with config.redisSentinels%s; with REDIS_URL put the credentials in secrets.redisUrl" $key (ternary " or redis.clusterNodes" "" $dataNodes)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* extraEnv must not shadow what the chart sets from config.* (the memory rule, the drain and
       the probes depend on them). */}}
{{- $managed := (include (print $.Template.BasePath "/configmap.yaml") . | fromYaml).data | default dict }}
{{- range $name, $_ := .Values.extraEnv }}
{{- if has $name (list "REDIS_CLUSTER_NODES" "REDIS_CLUSTER_TLS") }}
{{- fail (printf "extraEnv.%s: use redis.clusterNodes / redis.clusterTls (the chart must know, to leave REDIS_URL out)" $name) }}
{{- end }}
{{- if or (hasKey $managed $name) (eq $name "REPLICA_ID") }}
{{- fail (printf "extraEnv.%s: the chart sets %s itself; use the matching config.* value" $name $name) }}
{{- end }}
{{- end }}
{{- with .Values.gatewayApi }}
{{- if and .enabled (not .parentRefs) }}
{{- fail "gatewayApi.enabled needs gatewayApi.parentRefs (the Gateway(s) the route attaches to)" }}
{{- end }}
{{- if and .enabled .sessionPersistence.enabled (eq .sessionPersistence.lifetimeType "Permanent") (not .sessionPersistence.absoluteTimeout) }}
{{- fail "gatewayApi.sessionPersistence.lifetimeType Permanent needs gatewayApi.sessionPersistence.absoluteTimeout" }}
{{- end }}
{{- end }}
{{- end }}
