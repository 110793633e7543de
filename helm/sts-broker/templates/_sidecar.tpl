{{/*
Helper templates that add the broker to a pod as a native sidecar. They are what the example
Deployment (templates/workload.yaml) uses, and what a chart that depends on this one uses in its
own pod templates, passing this chart's context:

  {{- $broker := index .Subcharts "sts-broker" }}
  spec:
    serviceAccountName: {{ include "sts-broker.serviceAccountName" $broker }}
    securityContext:
      fsGroup: 65532          # the token files are 0400; kubelet makes them 0440 for this group
    initContainers:
      {{- include "sts-broker.sidecar.initContainer" $broker | nindent 6 }}
    containers:
      - name: app
        env:
          {{- include "sts-broker.sidecar.env" $broker | nindent 10 }}
        volumeMounts:
          {{- include "sts-broker.sidecar.volumeMounts" $broker | nindent 10 }}
    volumes:
      {{- include "sts-broker.sidecar.volumes" $broker | nindent 6 }}

helm/examples/sidecar-parent/ is a complete chart doing exactly that.
*/}}

{{/*
The broker as a native sidecar: an initContainer with restartPolicy: Always. Its startupProbe on
/readyz holds back the pod's containers until the prefetched roles hold credentials, and it is
stopped after them, so the workload can still fetch credentials while it shuts down.
*/}}
{{- define "sts-broker.sidecar.initContainer" -}}
{{- include "sts-broker.validate" . -}}
- name: sts-broker
  restartPolicy: Always
  {{- include "sts-broker.container" . | nindent 2 }}
{{- end }}

{{/* The pod volumes the sidecar and the workload's token mount need. */}}
{{- define "sts-broker.sidecar.volumes" -}}
{{- include "sts-broker.volumes" . }}
- name: sts-broker-client-token
  secret:
    secretName: {{ include "sts-broker.tokenSecretName" . }}
    defaultMode: 0400
    items:
      - key: {{ include "sts-broker.sidecar.role" . }}
        path: token
{{- end }}

{{/* The workload container's mount of its one client token. */}}
{{- define "sts-broker.sidecar.volumeMounts" -}}
- name: sts-broker-client-token
  mountPath: /var/run/secrets/sts-broker/client
  readOnly: true
{{- end }}

{{/*
The workload container's environment: the ECS endpoint for the sidecar role and its token file;
IMDS through the sidecar when config.imds.role is set, else IMDS disabled (ECS only).
*/}}
{{- define "sts-broker.sidecar.env" -}}
{{- $ecs := include "sts-broker.listen" (dict "root" . "section" "ecs") | fromJsonArray | first }}
{{- $host := include "sts-broker.host" $ecs }}
{{- if eq $host "0.0.0.0" }}{{ $host = "127.0.0.1" }}{{ end }}
{{- if eq $host "::" }}{{ $host = "::1" }}{{ end }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
- name: AWS_CONTAINER_CREDENTIALS_FULL_URI
  value: {{ printf "http://%s:%s/v1/credentials/%s" $host (include "sts-broker.port" $ecs) (include "sts-broker.sidecar.role" .) | quote }}
- name: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
  value: /var/run/secrets/sts-broker/client/token
{{- if include "sts-broker.imdsEnabled" . }}
{{- $imds := include "sts-broker.listen" (dict "root" . "section" "imds") | fromJsonArray | first }}
{{- $ihost := include "sts-broker.host" $imds }}
{{- if eq $ihost "0.0.0.0" }}{{ $ihost = "127.0.0.1" }}{{ end }}
{{- if eq $ihost "::" }}{{ $ihost = "::1" }}{{ end }}
{{- if contains ":" $ihost }}{{ $ihost = printf "[%s]" $ihost }}{{ end }}
- name: AWS_EC2_METADATA_SERVICE_ENDPOINT
  value: {{ printf "http://%s:%s/" $ihost (include "sts-broker.port" $imds) | quote }}
{{- else if .Values.sidecar.disableNodeImds }}
- name: AWS_EC2_METADATA_DISABLED
  value: "true"
{{- end }}
{{- end }}
