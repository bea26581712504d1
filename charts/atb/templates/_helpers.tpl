{{/* Names: with the release "atb" every object is atb-<component>, as in the guide. */}}
{{- define "atb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "atb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "atb.broker" -}}{{ include "atb.fullname" . }}-broker{{- end -}}
{{- define "atb.agentauth" -}}{{ include "atb.fullname" . }}-agentauth{{- end -}}
{{- define "atb.redis" -}}{{ include "atb.fullname" . }}-redis{{- end -}}

{{- define "atb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "atb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; `app` is the label the guide selects on (app=atb-broker). */}}
{{- define "atb.selector" -}}
app: {{ .name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "atb.image" -}}
{{- $img := merge (deepCopy (default dict .component.image)) .root.Values.image -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion ($img.tag | toString | trimAll "\"")) -}}
{{- end -}}

{{/* Pod-level fields of .Values.securityContext (the guide puts pod and container fields in one map). */}}
{{- define "atb.podSecurityContext" -}}
{{- pick .Values.securityContext "runAsNonRoot" "runAsUser" "runAsGroup" "fsGroup" "fsGroupChangePolicy" "seccompProfile" "supplementalGroups" | toYaml -}}
{{- end -}}

{{- define "atb.containerSecurityContext" -}}
{{- pick .Values.securityContext "runAsNonRoot" "runAsUser" "runAsGroup" "seccompProfile" "allowPrivilegeEscalation" "capabilities" "readOnlyRootFilesystem" "privileged" | toYaml -}}
{{- end -}}

{{/* A TOML value (inline form). Whole numbers print as integers: Helm reads
     every number as a float, the config's integer keys reject 1024.0 and its
     float keys accept 1024. */}}
{{- define "atb.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }}, {{ end }}{{ toJson $k }} = {{ include "atb.tomlValue" (index $v $k) }}{{ end -}} }
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "atb.tomlValue" $e }}{{ end }}]
{{- else if kindIs "string" $v -}}
{{ toJson $v }}
{{- else if kindIs "bool" $v -}}
{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else -}}
{{- fail (printf "a TOML value cannot be %v (null or unsupported type)" $v) -}}
{{- end -}}
{{- end -}}

{{/* [[tenants]]: reloaded live by the broker (file watch), so kept out of the restart checksum. */}}
{{- define "atb.tenantsToml" -}}
{{- range $t := .Values.tenants }}
[[tenants]]
{{- range $k := keys $t | sortAlpha }}
{{ toJson $k }} = {{ include "atb.tomlValue" (index $t $k) }}
{{- end }}
{{ end -}}
{{- end -}}

{{- define "atb.policyEngine" -}}
{{- if .Values.policy.engine -}}{{ .Values.policy.engine }}{{- else if .Values.opa.sidecar.enabled -}}opa{{- else -}}embedded{{- end -}}
{{- end -}}

{{/* Shared state: [redis] of one service ("" when off). Args: root, url (an explicit URL for this service). */}}
{{- define "atb.redisToml" -}}
{{- $ := .root -}}
{{- $r := $.Values.redis -}}
{{- if $r.enabled }}
[redis]
{{- if .url }}
url = {{ .url | toJson }}
{{- else if and (eq $r.architecture "replication") $r.sentinel.enabled }}
sentinels = [{{ printf "redis://%s-sentinel:%d" (include "atb.redis" $) (int $r.sentinel.port) | toJson }}]
master_name = {{ $r.sentinel.masterSet | toJson }}
{{- else }}
url = {{ printf "redis://%s-0.%s-headless:%d" (include "atb.redis" $) (include "atb.redis" $) (int $r.port) | toJson }}
{{- end }}
{{- if $r.auth.enabled }}
password_file = "/run/secrets/atb-redis/{{ $r.auth.existingSecretPasswordKey }}"
{{- end }}
pool_size = {{ int $r.client.poolSize }}
connect_timeout_ms = {{ int $r.client.connectTimeoutMs }}
command_timeout_ms = {{ int $r.client.commandTimeoutMs }}
{{- else if $.Values.externalRedis.url }}
[redis]
url = {{ default $.Values.externalRedis.url .url | toJson }}
{{- if $.Values.externalRedis.existingSecret }}
password_file = "/run/secrets/atb-redis/{{ $.Values.externalRedis.existingSecretPasswordKey }}"
{{- end }}
{{- end }}
{{- end -}}

{{/* Several replicas without shared state would each accept a mandate once. */}}
{{- define "atb.checkSharedState" -}}
{{- $shared := or .Values.redis.enabled .Values.externalRedis.url -}}
{{- if and (not $shared) (or (gt (int .Values.broker.replicaCount) 1) .Values.broker.autoscaling.enabled) -}}
{{- fail "broker.replicaCount > 1 (or autoscaling) needs shared state: redis.enabled or externalRedis.url (replay marks, rate limits, revocations)" -}}
{{- end -}}
{{- if and .Values.agentauth.enabled (gt (int .Values.agentauth.replicaCount) 1) (not (and $shared .Values.agentauth.redis.enabled)) -}}
{{- fail "agentauth.replicaCount > 1 needs agentauth.redis.enabled with redis.enabled or externalRedis.url (challenges, approvals)" -}}
{{- end -}}
{{- end -}}

{{/* A stop that outlasts the pod's termination grace is cut by SIGKILL:
requests in flight are lost and queued audit events are not written. */}}
{{- define "atb.checkShutdownTimes" -}}
{{- $b := .Values.broker -}}
{{- if ge (add (int $b.drainDelaySeconds) (int $b.shutdownGraceSeconds)) (int $b.terminationGracePeriodSeconds) -}}
{{- fail (printf "broker.drainDelaySeconds (%d) + broker.shutdownGraceSeconds (%d) must be less than broker.terminationGracePeriodSeconds (%d): the rest is the audit flush before the pod is killed" (int $b.drainDelaySeconds) (int $b.shutdownGraceSeconds) (int $b.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- $a := .Values.agentauth -}}
{{- if and $a.enabled (ge (int $a.shutdownGraceSeconds) (int $a.terminationGracePeriodSeconds)) -}}
{{- fail (printf "agentauth.shutdownGraceSeconds (%d) must be less than agentauth.terminationGracePeriodSeconds (%d): the rest is the audit flush before the pod is killed" (int $a.shutdownGraceSeconds) (int $a.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- end -}}

{{/* Sections both services read, besides their own. A change here needs a restart. */}}
{{- define "atb.commonToml" -}}
[tls]
cert_file = "/etc/atb/tls/tls.crt"
key_file = "/etc/atb/tls/tls.key"
client_ca_file = "/etc/atb/tls/ca.crt"
outbound_ca_file = "/etc/atb/tls/ca.crt"

[logging]
format = {{ .Values.logging.format | toJson }}
level = {{ .Values.logging.level | toJson }}

[audit]
sink = {{ .Values.audit.sink | toJson }}
{{- if .Values.audit.httpUrl }}
http_url = {{ .Values.audit.httpUrl | toJson }}
{{- end }}
queue_capacity = {{ int .Values.audit.queueCapacity }}
{{- end -}}

{{- define "atb.brokerStaticToml" -}}
# Rendered by the atb chart. Everything above [[tenants]] needs a restart
# (the pods roll on a change); [[tenants]] is reloaded by the broker's file watch.
[broker]
listen_addr = "0.0.0.0:8443"
admin_addr = "0.0.0.0:8080"
maintenance_mode = {{ .Values.broker.maintenanceMode }}
workers = {{ int .Values.broker.workers }}
drain_delay_seconds = {{ int .Values.broker.drainDelaySeconds }}
shutdown_grace_seconds = {{ int .Values.broker.shutdownGraceSeconds }}
config_watch_seconds = {{ int .Values.broker.configWatchSeconds }}

[shards]
count = {{ int .Values.broker.shards.count }}
mailbox_capacity = {{ int .Values.broker.shards.mailboxCapacity }}
dedicated = {{ include "atb.tomlValue" .Values.broker.shards.dedicated }}

[poa]
single_use = {{ .Values.poa.singleUse }}
leeway_seconds = {{ int .Values.poa.leewaySeconds }}
jwks_refresh_seconds = {{ int .Values.poa.jwksRefreshSeconds }}

[policy]
engine = {{ include "atb.policyEngine" . | toJson }}
{{- if ne .Values.policy.bundle "builtin" }}
dir = "/etc/atb/policy"
{{- end }}
reload_seconds = {{ int .Values.policy.reloadSeconds }}
eval_timeout_ms = {{ int .Values.policy.evalTimeoutMs }}
opa_decision_url = "http://localhost:{{ int .Values.opa.port }}/v1/data/atb/poa/decision"
opa_health_url = "http://localhost:{{ int .Values.opa.port }}/health"

{{ include "atb.commonToml" . }}
{{ include "atb.redisToml" (dict "root" . "url" "") }}
{{- end -}}

{{- define "atb.agentauthToml" -}}
# Rendered by the atb chart. AgentAuth reads this file at start (the pods roll
# on any change); its signing keys are re-read from the Secret without restart.
[agentauth]
listen_addr = "0.0.0.0:8444"
admin_addr = "0.0.0.0:8081"
issuer = {{ .Values.agentauth.issuer | toJson }}
audience = {{ .Values.agentauth.audience | toJson }}
mandate_ttl_seconds = {{ int .Values.agentauth.mandateTtlSeconds }}
challenge_ttl_seconds = {{ int .Values.agentauth.challengeTtlSeconds }}
keys_dir = "/var/run/secrets/atb-agentauth"
key_reload_seconds = {{ int .Values.agentauth.keyReloadSeconds }}
shutdown_grace_seconds = {{ int .Values.agentauth.shutdownGraceSeconds }}
trusted_proxies = {{ include "atb.tomlValue" .Values.agentauth.trustedProxies }}
{{- if .Values.admin.existingSecret }}
broker_admin_urls = [{{ printf "http://%s:%d" (include "atb.broker" .) (int .Values.broker.service.adminPort) | toJson }}]
{{- end }}

[agentauth.approvers]
issuer = {{ .Values.agentauth.approvers.issuer | toJson }}
audience = {{ .Values.agentauth.approvers.audience | toJson }}
{{- if .Values.agentauth.approvers.jwksUrl }}
jwks_url = {{ .Values.agentauth.approvers.jwksUrl | toJson }}
{{- end }}
role_claim = {{ .Values.agentauth.approvers.roleClaim | toJson }}
tenant_claim = {{ .Values.agentauth.approvers.tenantClaim | toJson }}
executive_roles = {{ include "atb.tomlValue" .Values.agentauth.approvers.executiveRoles }}
cross_tenant_roles = {{ include "atb.tomlValue" .Values.agentauth.approvers.crossTenantRoles }}

[policy]
engine = "embedded"
{{- if ne .Values.policy.bundle "builtin" }}
dir = "/etc/atb/policy"
{{- end }}
reload_seconds = {{ int .Values.policy.reloadSeconds }}

{{ include "atb.commonToml" . }}
{{- if .Values.agentauth.redis.enabled }}
{{ include "atb.redisToml" (dict "root" . "url" .Values.agentauth.redis.url) }}
{{- end }}
{{ include "atb.tenantsToml" . }}
{{- end -}}

{{/* Volumes both services mount. */}}
{{- define "atb.commonVolumes" -}}
{{- if and .Values.spire.enabled .Values.spire.helper.enabled }}
- name: tls
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: spiffe-helper-config
  configMap:
    name: {{ include "atb.fullname" . }}-spiffe-helper
{{- else }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
- name: policy
  configMap:
    name: {{ include "atb.fullname" . }}-policy
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if or (and .Values.redis.enabled .Values.redis.auth.enabled) (and (not .Values.redis.enabled) .Values.externalRedis.existingSecret) }}
- name: redis-password
  secret:
    secretName: {{ .Values.redis.enabled | ternary .Values.redis.auth.existingSecret .Values.externalRedis.existingSecret }}
{{- end }}
{{- if and .Values.spire.enabled .Values.spire.helper.enabled }}
- name: spire-agent-socket
  csi:
    driver: {{ .Values.spire.csiDriver }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "atb.commonMounts" -}}
- name: tls
  mountPath: /etc/atb/tls
  readOnly: true
- name: policy
  mountPath: /etc/atb/policy
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if or (and .Values.redis.enabled .Values.redis.auth.enabled) (and (not .Values.redis.enabled) .Values.externalRedis.existingSecret) }}
- name: redis-password
  mountPath: /run/secrets/atb-redis
  readOnly: true
{{- end }}
{{- end -}}

{{/* With SPIRE: spiffe-helper keeps the pod's X.509 SVID in /etc/atb/tls as tls.crt, tls.key, ca.crt. */}}
{{- define "atb.spiffeHelper" -}}
{{- if and .Values.spire.enabled .Values.spire.helper.enabled }}
- name: spiffe-helper
  image: "{{ .Values.spire.helper.image.repository }}:{{ .Values.spire.helper.image.tag }}"
  imagePullPolicy: IfNotPresent
  args: ["-config", "/etc/spiffe-helper/helper.conf"]
  securityContext:
    {{- include "atb.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml .Values.spire.helper.resources | nindent 4 }}
  volumeMounts:
    - name: tls
      mountPath: /etc/atb/tls
    - name: spiffe-helper-config
      mountPath: /etc/spiffe-helper
      readOnly: true
    - name: spire-agent-socket
      mountPath: {{ dir .Values.spire.agentSocket }}
      readOnly: true
{{- end }}
{{- end -}}

{{- define "atb.commonEnv" -}}
- name: LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
{{- if .Values.admin.existingSecret }}
- name: ATB_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.admin.existingSecret }}
      key: {{ .Values.admin.existingSecretKey }}
{{- end }}
{{- end -}}
