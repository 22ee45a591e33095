{{/* Where a pod of the release may run, for every pod it makes (the services' Deployments and the migration Job):
priorityClassName, nodeSelector, tolerations. A pod spec's fields, at its indentation (nindent 6 under spec:). The
affinity is each template's own: the services default to spreading their replicas (podAntiAffinity). */}}
{{- define "member-export.podPlacement" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
