{{/*
Kubernetes workload identity (daemonset mode, README "Kubernetes workload identity"): workload
pods prove who they are with a projected service-account token, which the broker verifies
against the cluster's keys; roles list the service_accounts they admit. No client-token Secret
is needed in the workload's namespace.

A workload pod needs three things, which these helpers give (pass this chart's context, or
`index .Subcharts "sts-broker"` from a parent chart):

  spec:
    containers:
      - name: app
        env:
          {{- include "sts-broker.podIdentity.env" $broker | nindent 10 }}
        volumeMounts:
          {{- include "sts-broker.podIdentity.volumeMounts" $broker | nindent 10 }}
    volumes:
      {{- include "sts-broker.podIdentity.volumes" $broker | nindent 6 }}

With workloadIdentity.eksPodIdentityCompatible (the default) they are exactly what EKS Pod
Identity injects: audience pods.eks.amazonaws.com, the token at
/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token and
AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials, so pods already set up
for EKS Pod Identity work unchanged.
*/}}

{{- define "sts-broker.podIdentity.audience" -}}
{{- $w := .Values.workloadIdentity }}
{{- if $w.audience }}{{ $w.audience }}
{{- else if $w.eksPodIdentityCompatible }}pods.eks.amazonaws.com
{{- else }}sts-broker
{{- end }}
{{- end }}

{{- define "sts-broker.podIdentity.tokenDir" -}}
{{- if .Values.workloadIdentity.eksPodIdentityCompatible }}/var/run/secrets/pods.eks.amazonaws.com/serviceaccount
{{- else }}/var/run/secrets/sts-broker/serviceaccount
{{- end }}
{{- end }}

{{- define "sts-broker.podIdentity.tokenFile" -}}
{{- if .Values.workloadIdentity.eksPodIdentityCompatible }}eks-pod-identity-token
{{- else }}token
{{- end }}
{{- end }}

{{/* The credentials URL: role-less (the one role the service account maps to) unless
workloadIdentity.role names one. */}}
{{- define "sts-broker.podIdentity.url" -}}
{{- $ecs := include "sts-broker.listen" (dict "root" . "section" "ecs") | fromJsonArray | first }}
{{- $host := include "sts-broker.host" $ecs }}
{{- $port := include "sts-broker.port" $ecs }}
{{- $base := ternary (printf "http://%s" $host) (printf "http://%s:%s" $host $port) (eq $port "80") }}
{{- with .Values.workloadIdentity.role }}{{ printf "%s/v1/credentials/%s" $base . }}
{{- else }}{{ printf "%s/v1/credentials" $base }}
{{- end }}
{{- end }}

{{- define "sts-broker.podIdentity.env" -}}
- name: AWS_CONTAINER_CREDENTIALS_FULL_URI
  value: {{ include "sts-broker.podIdentity.url" . | quote }}
- name: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
  value: {{ printf "%s/%s" (include "sts-broker.podIdentity.tokenDir" .) (include "sts-broker.podIdentity.tokenFile" .) | quote }}
{{- end }}

{{- define "sts-broker.podIdentity.volumeMounts" -}}
- name: sts-broker-pod-identity-token
  mountPath: {{ include "sts-broker.podIdentity.tokenDir" . }}
  readOnly: true
{{- end }}

{{/* The projected token: the kubelet rotates it at 80 % of expirationSeconds. */}}
{{- define "sts-broker.podIdentity.volumes" -}}
- name: sts-broker-pod-identity-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ include "sts-broker.podIdentity.audience" . }}
          expirationSeconds: {{ .Values.workloadIdentity.expirationSeconds }}
          path: {{ include "sts-broker.podIdentity.tokenFile" . }}
{{- end }}

{{/* [kubernetes] of config.toml: config.kubernetes, with what workloadIdentity decides. */}}
{{- define "sts-broker.podIdentity.table" -}}
{{- $w := .Values.workloadIdentity }}
{{- $t := deepCopy (.Values.config.kubernetes | default dict) }}
{{- $_ := set $t "issuer" (default $w.issuer $t.issuer) }}
{{- $_ := set $t "audiences" (default (list (include "sts-broker.podIdentity.audience" .)) $t.audiences) }}
{{- $_ := set $t "jwks" (default $w.jwks $t.jwks) }}
{{- $_ := set $t "node_name" (default "${NODE_NAME}" $t.node_name) }}
{{- with $w.clusterName }}{{ $_ := set $t "cluster_name" . }}{{ end }}
{{- include "sts-broker.toml.table" $t }}
{{- end }}

{{- define "sts-broker.podIdentity.jwks" -}}
{{- default .Values.workloadIdentity.jwks (.Values.config.kubernetes | default dict).jwks }}
{{- end }}
