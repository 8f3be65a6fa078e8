{{/*
Names and labels.
*/}}
{{- define "vidgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vidgate.fullname" -}}
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

{{- define "vidgate.redisName" -}}
{{- printf "%s-redis" (include "vidgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vidgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object of the release. */}}
{{- define "vidgate.commonLabels" -}}
helm.sh/chart: {{ include "vidgate.chart" . }}
app.kubernetes.io/name: {{ include "vidgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vidgate
{{- end }}

{{/* The gateway's selector: the component label keeps the in-chart Redis out. */}}
{{- define "vidgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vidgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "vidgate.labels" -}}
{{ include "vidgate.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "vidgate.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vidgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "vidgate.redisLabels" -}}
{{ include "vidgate.commonLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "vidgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vidgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vidgate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{- define "vidgate.secretName" -}}
{{- default (include "vidgate.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "vidgate.jwtConfigMapName" -}}
{{- default (printf "%s-jwt-keys" (include "vidgate.fullname" .)) .Values.jwtPublicKeys.existingConfigMap }}
{{- end }}

{{/* PEM file names mounted under /etc/vidgate/jwt, as a JSON list. */}}
{{- define "vidgate.jwtFileNames" -}}
{{- if .Values.jwtPublicKeys.existingConfigMap }}
{{- toJson .Values.jwtPublicKeys.fileNames }}
{{- else }}
{{- toJson (keys .Values.jwtPublicKeys.keys | sortAlpha) }}
{{- end }}
{{- end }}

{{- define "vidgate.replicasMoreThanOne" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/*
Refusals: combinations the schema cannot explain well. Included by the Deployment, so any
install or upgrade with them stops before anything is applied.
*/}}
{{- define "vidgate.validate" -}}
{{- if eq .Values.store.backend "embedded" }}
{{- if .Values.autoscaling.enabled }}
{{- fail "store.backend=embedded cannot autoscale: each pod would keep its own budgets and ledger. Use store.backend=redis (redis.url, redis.urlFromSecret or redis.enabled)." }}
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "store.backend=embedded needs replicaCount=1 (got %d): each pod would keep its own budgets and ledger. Use store.backend=redis (redis.url, redis.urlFromSecret or redis.enabled)." (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- fail "redis.enabled=true needs store.backend=redis (the in-chart Redis would be unused)." }}
{{- end }}
{{- else }}
{{- $sources := 0 }}
{{- if .Values.redis.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.redis.urlFromSecret.name }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.redis.sentinel.addresses }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.redis.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne (int $sources) 1 }}
{{- fail (printf "store.backend=redis needs exactly one of redis.url, redis.urlFromSecret.name, redis.sentinel.addresses, redis.enabled (got %d)." (int $sources)) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas." }}
{{- end }}
{{- $drain := 30 }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.lifecycle.preStopSleepSeconds) $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds (%d) plus the gateway's %d s drain, or in-flight requests are cut." (int .Values.terminationGracePeriodSeconds) (int .Values.lifecycle.preStopSleepSeconds) $drain) }}
{{- end }}
{{- if and .Values.jwtPublicKeys.existingConfigMap (not .Values.jwtPublicKeys.fileNames) }}
{{- fail "jwtPublicKeys.existingConfigMap needs jwtPublicKeys.fileNames (the PEM files to use from it)." }}
{{- end }}
{{- $previous := 0.0 }}
{{- range .Values.config.alerts.thresholds }}
{{- if le (float64 .) $previous }}
{{- fail "config.alerts.thresholds must be ascending, each in (0, 1]." }}
{{- end }}
{{- $previous = float64 . }}
{{- end }}
{{- if and .Values.metrics.port (eq (int .Values.metrics.port) (int .Values.containerPort)) }}
{{- fail "metrics.port must differ from containerPort (0 serves /metrics on the API port)." }}
{{- end }}
{{- end }}

{{/*
vidgate.toml: the values' `config` plus the keys the chart manages, as one dict.
*/}}
{{- define "vidgate.configDict" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $managed := dict
  "server" (dict "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)))
  "store" (dict "backend" .Values.store.backend)
}}
{{- if eq .Values.store.backend "embedded" }}
{{- $_ := set $managed.store "path" "/var/lib/vidgate/vidgate.redb" }}
{{- else }}
{{- if .Values.redis.enabled }}
{{- $_ := set $managed.store "redis_url" (printf "redis://%s:6379" (include "vidgate.redisName" .)) }}
{{- else if .Values.redis.url }}
{{- $_ := set $managed.store "redis_url" .Values.redis.url }}
{{- else if and .Values.redis.sentinel.addresses (not (include "vidgate.sentinelSecrets" .)) }}
{{- $_ := set $managed.store "redis_url" (include "vidgate.sentinelUrl" .) }}
{{- end }}
{{- end }}
{{- if .Values.metrics.port }}
{{- $_ := set $managed "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}
{{- end }}
{{- $_ := set $managed "archive" (include "vidgate.archive" . | fromJson) }}
{{- $pems := list }}
{{- range (include "vidgate.jwtFileNames" . | fromJsonArray) }}
{{- $pems = append $pems (printf "/etc/vidgate/jwt/%s" .) }}
{{- end }}
{{- if $pems }}
{{- $_ := set $managed "auth" (dict "public_key_pem_files" $pems) }}
{{- end }}
{{- toJson (mergeOverwrite $cfg $managed) }}
{{- end }}

{{/*
The archive's place: the bucket when one is named, else the store's volume with the embedded
store, else off (several pods share no volume).
*/}}
{{- define "vidgate.archive" -}}
{{- $a := .Values.archive }}
{{- if not $a.enabled }}
{{- toJson (dict "url" "") }}
{{- else if $a.s3.bucket }}
{{- $prefix := trimAll "/" $a.s3.prefix }}
{{- toJson (dict "url" (printf "s3://%s/%s" $a.s3.bucket $prefix) "s3_endpoint" $a.s3.endpoint "s3_region" $a.s3.region) }}
{{- else if eq .Values.store.backend "embedded" }}
{{- toJson (dict "url" "file:/var/lib/vidgate/results") }}
{{- else }}
{{- toJson (dict "url" "") }}
{{- end }}
{{- end }}

{{/*
A small TOML writer: Helm's toToml writes every number as a float (values arrive as JSON
numbers), which the gateway's integer keys refuse. Integral numbers are written as integers.
*/}}
{{- define "vidgate.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "vidgate.toml.value" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}{{ toJson . }}
{{- else if eq $kind "bool" }}{{ . }}
{{- else if has $kind (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") }}{{ . }}
{{- else if has $kind (list "float32" "float64") }}{{ if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if eq $kind "slice" }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "vidgate.toml.value" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: cannot write a %s as a TOML value" $kind) }}
{{- end }}
{{- end }}

{{/* A table: (dict "path" "a.b" "table" $map); scalars first, then sub-tables, sorted. */}}
{{- define "vidgate.toml.table" -}}
{{- $path := .path }}
{{- $table := .table }}
{{- range $key := keys $table | sortAlpha }}
{{- $v := get $table $key }}
{{- $kind := kindOf $v }}
{{- $isTables := and (eq $kind "slice") (gt (len $v) 0) (eq (kindOf (first $v)) "map") }}
{{- if and (ne $kind "map") (not $isTables) (ne $kind "invalid") }}
{{ include "vidgate.toml.key" $key }} = {{ include "vidgate.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $v := get $table $key }}
{{- $kind := kindOf $v }}
{{- $sub := include "vidgate.toml.key" $key }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}
{{- if eq $kind "map" }}
{{- if include "vidgate.toml.hasValues" $v }}

[{{ $sub }}]
{{- end }}
{{- include "vidgate.toml.table" (dict "path" $sub "table" $v) }}
{{- else if and (eq $kind "slice") (gt (len $v) 0) (eq (kindOf (first $v)) "map") }}
{{- range $item := $v }}

[[{{ $sub }}]]
{{- include "vidgate.toml.table" (dict "path" $sub "table" $item) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Non-empty when a table needs its own header: it has plain keys, or nothing at all. */}}
{{- define "vidgate.toml.hasValues" -}}
{{- $plain := false }}
{{- $sub := false }}
{{- range $k, $v := . }}
{{- if or (eq (kindOf $v) "map") (and (eq (kindOf $v) "slice") (gt (len $v) 0) (eq (kindOf (first $v)) "map")) }}{{ $sub = true }}{{ else }}{{ $plain = true }}{{ end }}
{{- end }}
{{- if or $plain (not $sub) }}true{{ end }}
{{- end }}

{{- define "vidgate.toml" -}}
# vidgate.toml rendered by the vidgate Helm chart from its values; see config/vidgate.toml
# in the repository for every key. Secrets come from the environment.
{{- include "vidgate.toml.table" (dict "path" "" "table" (include "vidgate.configDict" . | fromJson)) }}
{{- end }}

{{/*
The Sentinel form of store.redis_url. Passwords come from Secrets as environment variables
that Kubernetes substitutes (`$(NAME)`), so they never land in the ConfigMap.
*/}}
{{- define "vidgate.sentinelUrl" -}}
{{- $s := .Values.redis.sentinel -}}
{{- $auth := "" -}}
{{- if $s.passwordFromSecret.name -}}
{{- $auth = printf "%s:$(REDIS_PRIMARY_PASSWORD)@" $s.username -}}
{{- else if $s.username -}}
{{- $auth = printf "%s@" $s.username -}}
{{- end -}}
{{- $query := "" -}}
{{- if $s.sentinelPasswordFromSecret.name -}}
{{- $query = "?sentinel_password=$(REDIS_SENTINEL_PASSWORD)" -}}
{{- end -}}
{{- printf "redis+sentinel://%s%s/%s/%d%s" $auth (join "," $s.addresses) $s.masterName (int $s.db) $query -}}
{{- end }}

{{/*
Non-empty when a Sentinel password comes from a Secret (the URL then goes in the environment).
*/}}
{{- define "vidgate.sentinelSecrets" -}}
{{- $s := .Values.redis.sentinel -}}
{{- if or $s.passwordFromSecret.name $s.sentinelPasswordFromSecret.name }}true{{ end -}}
{{- end }}
