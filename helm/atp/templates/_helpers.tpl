{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "atp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name; the release name alone when it already contains the chart name.
Kept at most 52 characters so that suffixes like "-consumer" still fit in 63.
*/}}
{{- define "atp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "atp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "atp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "atp.labels" -}}
helm.sh/chart: {{ include "atp.chart" .ctx }}
{{ include "atp.selectorLabels" . }}
app.kubernetes.io/part-of: atp
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{- define "atp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "atp.configMapName" -}}
{{- printf "%s-config" (include "atp.fullname" .) }}
{{- end }}

{{- define "atp.apiKeysSecretName" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else }}
{{- printf "%s-api-keys" (include "atp.fullname" .) }}
{{- end }}
{{- end }}

{{- define "atp.ledgerClaimName" -}}
{{- default (printf "%s-ledger" (include "atp.fullname" .)) .Values.ledger.persistence.existingClaim }}
{{- end }}

{{/* ---------------------------------------------------------------- validation */}}

{{/* Fails the render on values the service would refuse at start-up anyway. */}}
{{- define "atp.validate" -}}
{{- if not .Values.channels }}
{{- fail "values: `channels` must define at least one channel" }}
{{- end }}
{{- $channelKeys := list "name" "priority" "locations" "safety_stock" "inbound_horizon_days" "safety_stock_overrides" "safety_stock_percent" "min_available" "max_available" "max_order_quantity" "low_stock_threshold" }}
{{- $seen := dict }}
{{- range $i, $c := .Values.channels }}
{{- if not (kindIs "map" $c) }}
{{- fail (printf "values: channels[%d] must be a table with name, priority and locations (a --set on channels[N] replaces the whole list: set every channel, or use a values file)" $i) }}
{{- end }}
{{- range $k, $_ := $c }}
{{- if not (has $k $channelKeys) }}
{{- fail (printf "values: unknown key `%s` in channels[%d] (allowed: %s)" $k $i (join ", " $channelKeys)) }}
{{- end }}
{{- end }}
{{- if not $c.name }}
{{- fail (printf "values: channels[%d].name is required" $i) }}
{{- end }}
{{- if hasKey $seen (toString $c.name) }}
{{- fail (printf "values: duplicate channel name %q in channels[%d]" (toString $c.name) $i) }}
{{- end }}
{{- $_ := set $seen (toString $c.name) true }}
{{- if not $c.priority }}
{{- fail (printf "values: channels[%d].priority is required (1 = highest)" $i) }}
{{- end }}
{{- if not $c.locations }}
{{- fail (printf "values: channels[%d].locations must list at least one location" $i) }}
{{- end }}
{{- end }}
{{- if gt (int .Values.consumer.replicas) 1 }}
{{- $p := .Values.ledger.persistence }}
{{- if or (not $p.enabled) (and (not $p.existingClaim) (not (has "ReadWriteMany" $p.accessModes))) }}
{{- fail "values: consumer.replicas > 1 needs one shared ledger: ledger.persistence.enabled with accessModes [ReadWriteMany] (or an existingClaim that is)" }}
{{- end }}
{{- end }}
{{- $topicKeys := list "movements" "reservations" "inbound" "dead_letter" "availability" "allocation_updates" "stock_states" "overrides" }}
{{- range $k, $_ := .Values.topics }}
{{- if not (has $k $topicKeys) }}
{{- fail (printf "values: unknown key `%s` in topics (allowed: %s)" $k (join ", " $topicKeys)) }}
{{- end }}
{{- end }}
{{- if not .Values.apiKeys.existingSecret }}
{{- $scopes := list "availability:read" "allocations:write" "admin" }}
{{- range $i, $k := .Values.apiKeys.keys }}
{{- if not $k.name }}
{{- fail (printf "values: apiKeys.keys[%d].name is required" $i) }}
{{- end }}
{{- if not (regexMatch "^[0-9a-fA-F]{64}$" (toString $k.sha256)) }}
{{- fail (printf "values: apiKeys.keys[%d].sha256 must be the 64 hex digits of the key's SHA-256" $i) }}
{{- end }}
{{- if not $k.scopes }}
{{- fail (printf "values: apiKeys.keys[%d].scopes must not be empty" $i) }}
{{- end }}
{{- range $k.scopes }}
{{- if not (has . $scopes) }}
{{- fail (printf "values: apiKeys.keys[%d].scopes: unknown scope %q (allowed: %s)" $i . (join ", " $scopes)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if lt (int .Values.consumer.terminationGracePeriodSeconds) 30 }}
{{- fail "values: consumer.terminationGracePeriodSeconds must be at least 30 (the consumer finishes its batch and commits on SIGTERM)" }}
{{- end }}
{{- if and .Values.api.autoscaling.enabled (lt (int .Values.api.autoscaling.maxReplicas) (int .Values.api.replicas)) }}
{{- fail "values: api.autoscaling.maxReplicas must be at least api.replicas (the HPA's minReplicas)" }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- atp.toml */}}

{{/*
The config file without [[api_keys]], in the contract's format. Strings and string arrays
are rendered with toJson: a JSON string or array of strings is also a valid TOML one.
*/}}
{{- define "atp.configToml" -}}
{{- include "atp.validate" . }}
# atp.toml rendered by the {{ .Chart.Name }} chart (release {{ .Release.Name }}).
# [[api_keys]] are appended at pod start from the Secret {{ include "atp.apiKeysSecretName" . }}.
# ATP_REDIS_URL, ATP_KAFKA_BOOTSTRAP and ATP_LEDGER_DIR in the pods' env override this file.

[redis]
{{- if .Values.redis.existingSecret }}
# url: from env ATP_REDIS_URL (Secret {{ .Values.redis.existingSecret }})
{{- else }}
url = {{ required "values: redis.url is required" .Values.redis.url | toJson }}
{{- end }}
cluster = {{ .Values.redis.cluster | default false }}
shards = {{ .Values.redis.shards | default 0 | int }}

[kafka]
bootstrap = {{ required "values: kafka.bootstrap is required" .Values.kafka.bootstrap | toJson }}
group_id = {{ required "values: kafka.groupId is required" .Values.kafka.groupId | toJson }}

[ledger]
dir = {{ required "values: ledger.dir is required" .Values.ledger.dir | toJson }}

[topics]
{{- range $k := list "movements" "reservations" "inbound" "dead_letter" "availability" "allocation_updates" "stock_states" "overrides" }}
{{ $k }} = {{ required (printf "values: topics.%s is required" $k) (index $.Values.topics $k) | toJson }}
{{- end }}

[statuses]
sellable = {{ required "values: statuses.sellable is required" .Values.statuses.sellable | toJson }}
{{- range .Values.channels }}

[[channels]]
name = {{ .name | toString | toJson }}
priority = {{ int .priority }}
locations = {{ .locations | toJson }}
{{- if hasKey . "safety_stock" }}
safety_stock = {{ int .safety_stock }}
{{- end }}
{{- if hasKey . "inbound_horizon_days" }}
inbound_horizon_days = {{ int .inbound_horizon_days }}
{{- end }}
{{- $channel := . }}
{{- range $k := list "safety_stock_percent" "min_available" "max_available" "max_order_quantity" "low_stock_threshold" }}
{{- if hasKey $channel $k }}
{{ $k }} = {{ int (index $channel $k) }}
{{- end }}
{{- end }}
{{- if .safety_stock_overrides }}
{{- $pairs := list }}
{{- range $sku, $qty := .safety_stock_overrides }}
{{- $pairs = append $pairs (printf "%s = %d" (toJson $sku) (int $qty)) }}
{{- end }}
safety_stock_overrides = { {{ join ", " $pairs }} }
{{- end }}
{{- end }}
{{- range .Values.kits }}

[[kits]]
sku = {{ required "values: kits[].sku is required" .sku | toString | toJson }}
{{- $parts := list }}
{{- range .components }}
{{- $parts = append $parts (printf "{sku = %s, quantity = %d}" (.sku | toString | toJson) (int .quantity)) }}
{{- end }}
components = [{{ join ", " $parts }}]
{{- end }}
{{- range .Values.locations }}

[[locations]]
name = {{ required "values: locations[].name is required" .name | toString | toJson }}
daily_capacity_units = {{ int .daily_capacity_units }}
{{- end }}
{{- range $table := list "consumer" "api" }}
{{- with index $.Values.tuning $table }}

[{{ $table }}]
{{- range $k, $v := . }}
{{ $k }} = {{ $v | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}

{{/* The [[api_keys]] tables, appended to atp.toml by the init container. */}}
{{- define "atp.apiKeysToml" -}}
# [[api_keys]] of the {{ .Chart.Name }} chart (release {{ .Release.Name }}): sha256 digests only.
{{- range .Values.apiKeys.keys }}

[[api_keys]]
name = {{ .name | toString | toJson }}
sha256 = {{ .sha256 | toString | lower | toJson }}
scopes = {{ .scopes | toJson }}
{{- end }}
{{ end }}

{{/* ---------------------------------------------------------------- pod building blocks */}}

{{- define "atp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "atp.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
{{- end }}

{{/* Pod annotations that roll the pods when the config or the chart's key Secret changes. */}}
{{- define "atp.configChecksums" -}}
checksum/config: {{ include "atp.configToml" . | sha256sum }}
{{- if not .Values.apiKeys.existingSecret }}
checksum/api-keys: {{ include "atp.apiKeysToml" . | sha256sum }}
{{- end }}
{{- end }}

{{/* The init container that assembles /etc/atp/atp.toml. */}}
{{- define "atp.configInitContainer" -}}
- name: config
  image: {{ include "atp.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - /bin/sh
    - -ec
    - cat /etc/atp-src/atp.toml /etc/atp-src/api-keys.toml > /etc/atp/atp.toml
  resources:
    {{- toYaml .Values.configInit.resources | nindent 4 }}
  securityContext:
    {{- include "atp.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: config-src
      mountPath: /etc/atp-src
      readOnly: true
    - name: config
      mountPath: /etc/atp
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* Env shared by every atp container. Call with (dict "ctx" $ "ledger" true|false). */}}
{{- define "atp.env" -}}
- name: ATP_CONFIG
  value: /etc/atp/atp.toml
- name: ATP_REDIS_URL
{{- if .ctx.Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .ctx.Values.redis.existingSecret }}
      key: {{ .ctx.Values.redis.existingSecretKey }}
{{- else }}
  value: {{ .ctx.Values.redis.url | quote }}
{{- end }}
- name: ATP_KAFKA_BOOTSTRAP
  value: {{ .ctx.Values.kafka.bootstrap | quote }}
{{- if .ledger }}
- name: ATP_LEDGER_DIR
  value: {{ .ctx.Values.ledger.dir | quote }}
{{- end }}
{{- end }}

{{/* Mounts shared by every atp main container. */}}
{{- define "atp.volumeMounts" -}}
- name: config
  mountPath: /etc/atp
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Volumes shared by every atp pod. */}}
{{- define "atp.volumes" -}}
- name: config-src
  projected:
    defaultMode: 0440
    sources:
      - configMap:
          name: {{ include "atp.configMapName" . }}
          items:
            - key: atp.toml
              path: atp.toml
      - secret:
          name: {{ include "atp.apiKeysSecretName" . }}
          items:
            - key: {{ if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecretKey }}{{ else }}api-keys.toml{{ end }}
              path: api-keys.toml
- name: config
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "atp.ledgerVolume" -}}
- name: ledger
{{- if .Values.ledger.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "atp.ledgerClaimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{/* The consumer's exec probe: the heartbeat file is younger than maxAge seconds. */}}
{{- define "atp.consumerHeartbeatCommand" -}}
- python
- -c
- "import os, sys, time; sys.exit(0 if time.time() - os.stat('/tmp/atp-consumer-alive').st_mtime < {{ int . }} else 1)"
{{- end }}
