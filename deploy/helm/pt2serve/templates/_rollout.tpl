{{/* Pod template of the weights rollout (shared by the hook Job and the CronJob). */}}
{{- define "pt2serve.rolloutPod" -}}
metadata:
  labels:
    {{- include "pt2serve.commonLabels" . | nindent 4 }}
    app.kubernetes.io/component: weights-rollout
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "pt2serve.fullname" . }}-rollout
  # DNS discovery through the headless admin Service needs no API access.
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: rollout
      image: {{ include "pt2serve.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["/usr/bin/pt2ctl"]
      args:
        - weights
        - rollout
        - {{ .Values.weights.model | quote }}
        - {{ .Values.weights.file | quote }}
        - --version={{ .Values.weights.version }}
        - --sha256={{ .Values.weights.sha256 }}
        - --server-side
        - --headless={{ include "pt2serve.fullname" . }}-admin:{{ .Values.server.ports.admin }}
        - --stage-timeout={{ .Values.weights.rollout.stageTimeoutSeconds }}
        - --commit-timeout={{ .Values.weights.rollout.commitTimeoutSeconds }}
        - --token-file=/var/run/secrets/pt2serve/admin/{{ .Values.admin.token.secretKey }}
        {{- if .Values.tls.admin.enabled }}
        - --tls-ca=/etc/pt2serve/tls/admin-ca/ca.crt
        # Pods are dialled by IP: verify the certificate against the Service name.
        - --tls-server-name={{ include "pt2serve.fullname" . }}-admin
        {{- if .Values.tls.admin.clientCertSecretName }}
        - --tls-cert=/etc/pt2serve/tls/admin-client/tls.crt
        - --tls-key=/etc/pt2serve/tls/admin-client/tls.key
        {{- end }}
        {{- end }}
      securityContext:
        {{- include "pt2serve.jobSecurityContext" . | nindent 8 }}
      resources:
        {{- toYaml .Values.weights.rollout.resources | nindent 8 }}
      volumeMounts:
        - name: admin-token
          mountPath: /var/run/secrets/pt2serve/admin
          readOnly: true
      {{- if .Values.tls.admin.enabled }}
        - name: admin-ca
          mountPath: /etc/pt2serve/tls/admin-ca
          readOnly: true
        {{- if .Values.tls.admin.clientCertSecretName }}
        - name: admin-client
          mountPath: /etc/pt2serve/tls/admin-client
          readOnly: true
        {{- end }}
      {{- end }}
  volumes:
    - name: admin-token
      secret:
        secretName: {{ include "pt2serve.adminSecretName" . }}
        items:
          - key: {{ .Values.admin.token.secretKey }}
            path: {{ .Values.admin.token.secretKey }}
        defaultMode: 0440
  {{- if .Values.tls.admin.enabled }}
    - name: admin-ca
      secret:
        secretName: {{ .Values.tls.admin.caSecretName }}
        defaultMode: 0440
    {{- if .Values.tls.admin.clientCertSecretName }}
    - name: admin-client
      secret:
        secretName: {{ .Values.tls.admin.clientCertSecretName }}
        defaultMode: 0440
    {{- end }}
  {{- end }}
{{- end }}
