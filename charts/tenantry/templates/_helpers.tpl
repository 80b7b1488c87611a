{{/* Name of the chart. */}}
{{- define "tenantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name appended unless it contains it. */}}
{{- define "tenantry.fullname" -}}
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

{{- define "tenantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tenantry.labels" -}}
helm.sh/chart: {{ include "tenantry.chart" . }}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tenantry
{{- end }}

{{/* Labels selecting the operator pods. */}}
{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tenantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tenantry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image. */}}
{{- define "tenantry.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The chat API image (--image): apiImage, falling back to image. */}}
{{- define "tenantry.apiImage" -}}
{{- $repo := .Values.apiImage.repository | default .Values.image.repository }}
{{- $tag := .Values.apiImage.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
Environment of the chat API pods (--api-env KEY=VALUE), as a dict: apiEnv, then the
settings of redis, llm and tracing (which win).
*/}}
{{- define "tenantry.apiEnv" -}}
{{- $env := deepCopy .Values.apiEnv }}
{{- with .Values.redis.url }}{{ $_ := set $env "TENANTRY_REDIS_URL" . }}{{ end }}
{{- with .Values.llm.baseUrl }}{{ $_ := set $env "OPENAI_BASE_URL" . }}{{ end }}
{{- if and .Values.tracing.otlpEndpoint .Values.tracing.apiPods }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .Values.tracing.otlpEndpoint }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{/* Labels of a store's objects (`component`: qdrant or redis). */}}
{{- define "tenantry.storeLabels" -}}
helm.sh/chart: {{ include "tenantry.chart" .ctx }}
{{ include "tenantry.storeSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tenantry
{{- end }}

{{/* Labels selecting a store's pods. */}}
{{- define "tenantry.storeSelectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* In-cluster DNS name of a store's client Service (reachable from tenant namespaces). */}}
{{- define "tenantry.storeHost" -}}
{{- printf "%s-%s.%s.svc" (include "tenantry.fullname" .ctx) .component .ctx.Release.Namespace }}
{{- end }}

{{/* gRPC URL of the chart's Qdrant. */}}
{{- define "tenantry.qdrantUrl" -}}
{{- printf "http://%s:6334" (include "tenantry.storeHost" (dict "ctx" . "component" "qdrant")) }}
{{- end }}

{{/*
A secret value kept across upgrades: key `key` of Secret `name` in the release namespace when
it exists, else 32 new random characters (letters and digits: safe in a URL and a redis.conf).
*/}}
{{- define "tenantry.keptSecret" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- $data := dig "data" (dict) $existing }}
{{- if hasKey $data .key }}
{{- index $data .key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}

{{/*
Refuses contradictory values (values.schema.json checks each value alone; these are the rules
between values).
*/}}
{{- define "tenantry.validate" -}}
{{- $q := .Values.qdrant }}
{{- $r := .Values.redis }}
{{- $cfg := .Values.api.config | default dict }}
{{- if and $q.deploy $q.url }}
{{- fail "qdrant.url is set while qdrant.deploy is true: set qdrant.deploy=false to use the Qdrant at qdrant.url, or leave qdrant.url empty to use the chart's own" }}
{{- end }}
{{- if and $q.deploy $q.apiKeySecret.name }}
{{- fail "qdrant.apiKeySecret is the key of an external Qdrant (qdrant.deploy=false); the chart generates the key of its own Qdrant" }}
{{- end }}
{{- if and (not $q.deploy) (not $q.url) $q.apiKeySecret.name }}
{{- fail "qdrant.apiKeySecret is set without qdrant.url: it is the key of the Qdrant at qdrant.url" }}
{{- end }}
{{- if and $r.deploy (or $r.url $r.urlSecret.name) }}
{{- fail "redis.url / redis.urlSecret is set while redis.deploy is true: set redis.deploy=false to use that Redis, or leave both empty to use the chart's own" }}
{{- end }}
{{- if and $r.url $r.urlSecret.name }}
{{- fail "redis.url and redis.urlSecret are both set: give the URL one way (urlSecret when it holds a password)" }}
{{- end }}
{{- if dig "vector" "qdrantUrl" "" $cfg }}
{{- fail "api.config.vector.qdrantUrl is not used by the chart: the operator gives the API pods the Qdrant it provisions in (qdrant.deploy or qdrant.url)" }}
{{- end }}
{{- if and (dig "quota" "redisUrl" "" $cfg) (or $r.deploy $r.url $r.urlSecret.name) }}
{{- fail "api.config.quota.redisUrl contradicts redis.deploy / redis.url / redis.urlSecret: give the Redis of the quotas one way" }}
{{- end }}
{{- if and $r.aclUsers (not (or $r.deploy $r.urlSecret.name)) }}
{{- fail "redis.aclUsers needs a Redis the operator can manage users on: the chart's (redis.deploy) or one whose admin URL is in redis.urlSecret" }}
{{- end }}
{{- if and $q.tenantTokens (not $q.deploy) (not $q.apiKeySecret.name) }}
{{- fail "qdrant.tenantTokens needs the Qdrant's API key (the tokens are signed with it): the chart's Qdrant (qdrant.deploy) or qdrant.url with qdrant.apiKeySecret" }}
{{- end }}
{{- end }}

{{/* pod.yaml of the API ConfigMap: the api.* scheduling values that are set. */}}
{{- define "tenantry.apiPodDefaults" -}}
{{- $out := dict }}
{{- range $k := list "imagePullSecrets" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "podLabels" "podAnnotations" "priorityClassName" "resources" }}
{{- with index $.Values.api $k }}{{ $_ := set $out $k . }}{{ end }}
{{- end }}
{{- toYaml $out }}
{{- end }}
