{{/*
Names, labels and the rendering of config.toml. Every helper takes the chart's context (`.` here,
or `(index .Subcharts "sts-broker")` from a parent chart), so a parent chart that depends on this
one renders the same names as the chart itself.
*/}}

{{- define "sts-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sts-broker.fullname" -}}
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

{{- define "sts-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sts-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sts-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sts-broker.labels" -}}
helm.sh/chart: {{ include "sts-broker.chart" . }}
{{ include "sts-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sts-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sts-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sts-broker.configMapName" -}}
{{- printf "%s-config" (include "sts-broker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sts-broker.tokenSecretName" -}}
{{- if .Values.clientTokens.existingSecret }}
{{- .Values.clientTokens.existingSecret }}
{{- else }}
{{- printf "%s-tokens" (include "sts-broker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "sts-broker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Paths inside the broker's container (and the workload's, for the token). */}}
{{- define "sts-broker.configDir" -}}/etc/sts-broker{{- end }}
{{- define "sts-broker.tokenDir" -}}/var/run/secrets/sts-broker/tokens{{- end }}
{{- define "sts-broker.webIdentityDir" -}}/var/run/secrets/sts-broker/web-identity{{- end }}

{{/*
Validates the values once; every template that renders something includes it.
*/}}
{{- define "sts-broker.validate" -}}
{{- if not (has .Values.mode (list "sidecar" "daemonset")) }}
{{- fail (printf "mode must be \"sidecar\" or \"daemonset\", not %q" (toString .Values.mode)) }}
{{- end }}
{{- if not .Values.roles }}
{{- fail "roles: configure at least one role (name, arn, ...), see values.yaml" }}
{{- end }}
{{- range $i, $r := .Values.roles }}
{{- if not (and (kindIs "map" $r) $r.name) }}
{{- fail (printf "roles[%d]: every role needs a name (and what its kind needs: arn, ...)" $i) }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9_.-]{1,64}$" $r.name) }}
{{- fail (printf "roles[%d]: name %q must be 1..64 of [A-Za-z0-9_.-]" $i $r.name) }}
{{- end }}
{{- if hasKey $r "token_files" }}
{{- fail (printf "roles[%d] (%s): token_files is set by the chart from the client-token Secret; use clientTokens instead" $i $r.name) }}
{{- end }}
{{- end }}
{{- $src := .Values.config.source | default dict }}
{{- if and (eq (toString $src.kind) "web_identity") (not $src.role_arn) }}
{{- fail "config.source: kind \"web_identity\" needs role_arn (the role the broker itself assumes with the projected token)" }}
{{- end }}
{{- if and .Values.config.imds .Values.config.imds.role }}
{{- if not (include "sts-broker.hasRole" (dict "root" . "role" .Values.config.imds.role)) }}
{{- fail (printf "config.imds.role %q is not one of the roles" .Values.config.imds.role) }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- $role := include "sts-broker.sidecar.role" . }}
{{- if not (include "sts-broker.hasRole" (dict "root" . "role" $role)) }}
{{- fail (printf "sidecar.role %q is not one of the roles" $role) }}
{{- end }}
{{- if eq (include "sts-broker.needsPrivilegedPort" .) "true" }}
{{- fail "sidecar mode: the broker listens in the pod's own network namespace and runs without capabilities; use ports >= 1024 (ports below 1024 are for daemonset mode)" }}
{{- end }}
{{- range (include "sts-broker.listen" (dict "root" . "section" "admin") | fromJsonArray) }}
{{- if include "sts-broker.isLoopback" (include "sts-broker.host" .) }}
{{- fail (printf "sidecar mode: config.admin.listen %q is loopback, but the kubelet probes /readyz at the pod's IP; use 0.0.0.0:PORT" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.workloadIdentity.enabled (ne .Values.mode "daemonset") }}
{{- fail "workloadIdentity: service-account tokens are verified by the node's broker; use mode \"daemonset\"" }}
{{- end }}
{{- if and .Values.config.kubernetes (not .Values.workloadIdentity.enabled) }}
{{- fail "config.kubernetes is rendered with workloadIdentity.enabled: true (which also wires NODE_NAME and the API server access)" }}
{{- end }}
{{- if and (eq .Values.mode "daemonset") .Values.metrics.serviceMonitor.enabled }}
{{- $admin := include "sts-broker.listen" (dict "root" . "section" "admin") | fromJsonArray | first }}
{{- if include "sts-broker.isLoopback" (include "sts-broker.host" $admin) }}
{{- fail (printf "daemonset mode: metrics.serviceMonitor needs config.admin.listen on the node's address (\"0.0.0.0:9469\"), not %q" $admin) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sts-broker.hasRole" -}}
{{- range .root.Values.roles }}{{ if eq .name $.role }}true{{ end }}{{ end }}
{{- end }}

{{/* The role the sidecar's workload uses: sidecar.role or the first role. */}}
{{- define "sts-broker.sidecar.role" -}}
{{- default (first .Values.roles).name .Values.sidecar.role }}
{{- end }}

{{/*
The listen addresses of one listener ("ecs", "imds" or "admin") as a JSON list: config.<section>.listen
if set, else the mode's default.
*/}}
{{- define "sts-broker.listen" -}}
{{- $root := .root }}
{{- $conf := index ($root.Values.config | default dict) .section | default dict }}
{{- $defaults := dict
  "sidecar" (dict "ecs" "127.0.0.1:8170" "imds" "127.0.0.1:8169" "admin" "0.0.0.0:9469")
  "daemonset" (dict "ecs" "169.254.170.23:80" "imds" "169.254.169.254:80" "admin" "127.0.0.1:9469") }}
{{- $l := $conf.listen | default (index (index $defaults $root.Values.mode) .section) }}
{{- if kindIs "string" $l }}{{ $l = list $l }}{{ end }}
{{- toJson $l }}
{{- end }}

{{/* "1.2.3.4:80" -> "1.2.3.4"; "[::1]:80" -> "::1" */}}
{{- define "sts-broker.host" -}}
{{- regexReplaceAll ":[0-9]+$" . "" | trimPrefix "[" | trimSuffix "]" }}
{{- end }}

{{- define "sts-broker.port" -}}
{{- regexFind "[0-9]+$" . }}
{{- end }}

{{- define "sts-broker.isLoopback" -}}
{{- if or (hasPrefix "127." .) (eq . "::1") (eq . "localhost") }}true{{ end }}
{{- end }}

{{- define "sts-broker.isWildcard" -}}
{{- if or (eq . "0.0.0.0") (eq . "::") }}true{{ end }}
{{- end }}

{{- define "sts-broker.imdsEnabled" -}}
{{- if and .Values.config.imds .Values.config.imds.role }}true{{ end }}
{{- end }}

{{/* "true" when a listener binds a port below 1024 (needs CAP_NET_BIND_SERVICE). */}}
{{- define "sts-broker.needsPrivilegedPort" -}}
{{- $root := . }}
{{- $sections := list "ecs" "admin" }}
{{- if include "sts-broker.imdsEnabled" . }}{{ $sections = append $sections "imds" }}{{ end }}
{{- $priv := false }}
{{- range $sections }}
{{- range (include "sts-broker.listen" (dict "root" $root "section" .) | fromJsonArray) }}
{{- if lt (include "sts-broker.port" . | atoi) 1024 }}{{ $priv = true }}{{ end }}
{{- end }}
{{- end }}
{{- $priv }}
{{- end }}

{{/* Link-local IPv4 addresses the listeners bind (daemonset mode adds them to the node's lo). */}}
{{- define "sts-broker.linkLocalAddresses" -}}
{{- $root := . }}
{{- $sections := list "ecs" "admin" }}
{{- if include "sts-broker.imdsEnabled" . }}{{ $sections = append $sections "imds" }}{{ end }}
{{- $out := list }}
{{- range $sections }}
{{- range (include "sts-broker.listen" (dict "root" $root "section" .) | fromJsonArray) }}
{{- $h := include "sts-broker.host" . }}
{{- if hasPrefix "169.254." $h }}{{ $out = append $out $h }}{{ end }}
{{- end }}
{{- end }}
{{- $out | uniq | toJson }}
{{- end }}

{{/*
A TOML value from a values-file value: strings are JSON-escaped (a valid TOML basic string),
numbers and booleans as they are, lists as arrays, maps as inline tables.
*/}}
{{- define "sts-broker.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if kindIs "float64" $v }}{{ if eq $v (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "uint64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $x := $v }}{{ if $i }}, {{ end }}{{ include "sts-broker.toml.value" $x }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- $first := true }}{{ range $k, $x := $v }}{{ if not $first }},{{ end }}{{ $first = false }} {{ toJson $k }} = {{ include "sts-broker.toml.value" $x }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* `key = value` lines of one table, keys sorted; nulls skipped. */}}
{{- define "sts-broker.toml.table" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ $k }} = {{ include "sts-broker.toml.value" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* config.toml */}}
{{- define "sts-broker.configToml" -}}
{{- $root := . }}
{{- $c := .Values.config | default dict -}}
# Rendered by the sts-broker Helm chart (mode {{ .Values.mode }}); edit the chart's values instead.
[sts]
{{- include "sts-broker.toml.table" ($c.sts | default dict) }}

[source]
{{- $src := deepCopy ($c.source | default dict) }}
{{- if and (eq (toString $src.kind) "web_identity") (not $src.token_file) }}
{{- $_ := set $src "token_file" (printf "%s/token" (include "sts-broker.webIdentityDir" .)) }}
{{- end }}
{{- include "sts-broker.toml.table" $src }}

[refresh]
{{- include "sts-broker.toml.table" ($c.refresh | default dict) }}
{{- range list "ecs" "admin" }}

[{{ . }}]
{{- $t := deepCopy (index $c . | default dict) }}
{{- $_ := set $t "listen" (include "sts-broker.listen" (dict "root" $root "section" .) | fromJsonArray) }}
{{- include "sts-broker.toml.table" $t }}
{{- end }}
{{- if include "sts-broker.imdsEnabled" . }}

[imds]
{{- $t := deepCopy $c.imds }}
{{- $_ := set $t "listen" (include "sts-broker.listen" (dict "root" $root "section" "imds") | fromJsonArray) }}
{{- include "sts-broker.toml.table" $t }}
{{- end }}
{{- /* Any other table ([audit], ...) as it is. */}}
{{- if .Values.workloadIdentity.enabled }}

[kubernetes]
{{- include "sts-broker.podIdentity.table" . }}
{{- end }}
{{- range $table, $t := omit $c "sts" "source" "refresh" "ecs" "admin" "imds" "kubernetes" }}
{{- if $t }}

[{{ $table }}]
{{- include "sts-broker.toml.table" $t }}
{{- end }}
{{- end }}
{{- range .Values.roles }}

[[role]]
{{- $r := deepCopy . }}
{{- $_ := set $r "token_files" (list (printf "%s/%s" (include "sts-broker.tokenDir" $root) .name)) }}
{{- if and (eq (toString .kind) "web_identity") (not .web_identity_token_file) }}
{{- $_ := set $r "web_identity_token_file" (printf "%s/token" (include "sts-broker.webIdentityDir" $root)) }}
{{- end }}
{{- include "sts-broker.toml.table" $r }}
{{- end }}
{{ end }}

{{/*
The broker's container, without name/restartPolicy (added by the sidecar and DaemonSet templates).
*/}}
{{- define "sts-broker.container" -}}
{{- $admin := include "sts-broker.listen" (dict "root" . "section" "admin") | fromJsonArray | first }}
{{- $adminHost := include "sts-broker.host" $admin }}
{{- $probeHost := "" }}
{{- if not (include "sts-broker.isWildcard" $adminHost) }}{{ $probeHost = $adminHost }}{{ end }}
{{- $privileged := eq (include "sts-broker.needsPrivilegedPort" .) "true" -}}
image: {{ include "sts-broker.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: ["serve", "-c", "{{ include "sts-broker.configDir" . }}/config.toml"{{ if eq .Values.configReload.mode "watch" }}, "--watch-config={{ .Values.configReload.interval }}"{{ end }}]
env:
  - name: RUST_LOG
    value: {{ .Values.logLevel | quote }}
  {{- if .Values.workloadIdentity.enabled }}
  # [kubernetes] node_name = "${NODE_NAME}": tokens bound to other nodes are refused.
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- $seen := dict }}
  {{- range $section := list "ecs" "imds" "admin" }}
  {{- if or (ne $section "imds") (include "sts-broker.imdsEnabled" $) }}
  {{- $port := include "sts-broker.listen" (dict "root" $ "section" $section) | fromJsonArray | first | include "sts-broker.port" }}
  {{- if not (hasKey $seen $port) }}
  {{- $_ := set $seen $port true }}
  - name: {{ ternary "metrics" $section (eq $section "admin") }}
    containerPort: {{ $port }}
    protocol: TCP
  {{- end }}
  {{- end }}
  {{- end }}
startupProbe:
  httpGet:
    {{- with $probeHost }}
    host: {{ . }}
    {{- end }}
    path: /readyz
    port: {{ include "sts-broker.port" $admin }}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: 2
livenessProbe:
  httpGet:
    {{- with $probeHost }}
    host: {{ . }}
    {{- end }}
    path: /healthz
    port: {{ include "sts-broker.port" $admin }}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: 2
readinessProbe:
  httpGet:
    {{- with $probeHost }}
    host: {{ . }}
    {{- end }}
    path: /readyz
    port: {{ include "sts-broker.port" $admin }}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: 2
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  {{- if $privileged }}
  # Binds a port below 1024: CAP_NET_BIND_SERVICE is only effective for uid 0 in Kubernetes
  # (no ambient capabilities), so this container runs as root with that single capability.
  runAsUser: 0
  runAsGroup: 0
  runAsNonRoot: false
  {{- else }}
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  runAsNonRoot: true
  {{- end }}
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop: ["ALL"]
    {{- if $privileged }}
    add: ["NET_BIND_SERVICE"]
    {{- end }}
  seccompProfile:
    type: RuntimeDefault
volumeMounts:
  - name: sts-broker-config
    mountPath: {{ include "sts-broker.configDir" . }}
    readOnly: true
  - name: sts-broker-tokens
    mountPath: {{ include "sts-broker.tokenDir" . }}
    readOnly: true
  {{- if include "sts-broker.webIdentity" . }}
  - name: sts-broker-web-identity
    mountPath: {{ include "sts-broker.webIdentityDir" . }}
    readOnly: true
  {{- end }}
  {{- with include "sts-broker.auditDir" . }}
  - name: sts-broker-audit
    mountPath: {{ . }}
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
"true" when the chart projects a ServiceAccount token: for [source] kind = "web_identity", and
for roles of kind "web_identity", unless they name their own token file.
*/}}
{{- define "sts-broker.webIdentity" -}}
{{- $src := .Values.config.source | default dict }}
{{- $need := and (eq (toString $src.kind) "web_identity") (not $src.token_file) }}
{{- range .Values.roles }}
{{- if and (eq (toString .kind) "web_identity") (not .web_identity_token_file) }}{{ $need = true }}{{ end }}
{{- end }}
{{- if $need }}true{{ end }}
{{- end }}

{{/* The directory of [audit] path when it needs a writable volume (not /dev/stdout and the like). */}}
{{- define "sts-broker.auditDir" -}}
{{- $audit := .Values.config.audit | default dict }}
{{- if and $audit.path (not (hasPrefix "/dev/" $audit.path)) }}{{ dir $audit.path }}{{ end }}
{{- end }}

{{/* The broker's volumes: config, client tokens (0400), projected token for web_identity. */}}
{{- define "sts-broker.volumes" -}}
- name: sts-broker-config
  configMap:
    name: {{ include "sts-broker.configMapName" . }}
    defaultMode: 0444
- name: sts-broker-tokens
  secret:
    secretName: {{ include "sts-broker.tokenSecretName" . }}
    defaultMode: 0400
{{- if include "sts-broker.webIdentity" . }}
- name: sts-broker-web-identity
  projected:
    defaultMode: 0400
    sources:
      - serviceAccountToken:
          audience: {{ .Values.webIdentity.audience }}
          expirationSeconds: {{ .Values.webIdentity.expirationSeconds }}
          path: token
{{- end }}
{{- if include "sts-broker.auditDir" . }}
# The audit trail's directory: the root file system is read-only. An emptyDir lives as long as
# the pod; ship the file from there, or set config.audit.path to /dev/stdout.
- name: sts-broker-audit
  emptyDir:
    sizeLimit: 256Mi
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Annotations that roll the pods when the config changes. */}}
{{- define "sts-broker.checksums" -}}
{{- if eq .Values.configReload.mode "restart" }}
checksum/sts-broker-config: {{ include "sts-broker.configToml" . | sha256sum }}
{{- else }}
sts-broker/config-reload: watch
{{- end }}
{{- end }}
