{{/* Chart name, truncated to 63 characters (DNS-1123 label). */}}
{{- define "pt2serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: RELEASE-CHART, or RELEASE when it already contains the chart name.
Truncated to 52 so suffixes such as "-admin" and "-rollout" stay within 63. */}}
{{- define "pt2serve.fullname" -}}
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

{{- define "pt2serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the server pods (never changes across upgrades). */}}
{{- define "pt2serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pt2serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Selector labels of the rollout Job's pods (the only admin clients the NetworkPolicy admits). */}}
{{- define "pt2serve.rolloutSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pt2serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: weights-rollout
{{- end }}

{{/* Common labels (without component). */}}
{{- define "pt2serve.commonLabels" -}}
helm.sh/chart: {{ include "pt2serve.chart" . }}
app.kubernetes.io/name: {{ include "pt2serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pt2serve
{{- end }}

{{- define "pt2serve.labels" -}}
{{ include "pt2serve.commonLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "pt2serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pt2serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pt2serve.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{- define "pt2serve.adminSecretName" -}}
{{- default (printf "%s-admin-token" (include "pt2serve.fullname" .)) .Values.admin.token.existingSecret }}
{{- end }}

{{/* Whether the preStop sleep action is rendered (Kubernetes >= 1.30). */}}
{{- define "pt2serve.preStopSleep" -}}
{{- if and (gt (int .Values.server.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) }}true{{ end }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + drain delay + drain timeout + margin,
rounded up to whole seconds. */}}
{{- define "pt2serve.gracePeriodSeconds" -}}
{{- $ms := add .Values.server.drainDelayMs .Values.server.drainTimeoutMs }}
{{- $pre := 0 }}
{{- if include "pt2serve.preStopSleep" . }}{{ $pre = int .Values.server.preStopSleepSeconds }}{{ end }}
{{- add (div (add $ms 999) 1000) .Values.server.terminationMarginSeconds $pre }}
{{- end }}

{{/* Name of the ConfigMap recording the weights version pods load at start. */}}
{{- define "pt2serve.weightsConfigMap" -}}
{{- printf "%s-weights" (include "pt2serve.fullname" .) }}
{{- end }}

{{/* Hardened security context shared by the Job and test pods. */}}
{{- define "pt2serve.jobSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
