{{/* The services, in start order, and what each one reads. */}}
{{- define "member-export.services" -}}
scheduler extractor dispatcher notifier admin
{{- end -}}

{{- define "member-export.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "member-export.fullname" -}}
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

{{- define "member-export.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "member-export.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: member-export
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "dispatcher"). */}}
{{- define "member-export.selectorLabels" -}}
app.kubernetes.io/name: {{ include "member-export.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "member-export.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The name of one part of the release, (dict "root" $ "component" "admin"): the full name, cut short enough for
"-<component>" to follow it within 63 characters (a Service's or a Job's name, and the job-name label, may not be
longer), so a long release name (up to Helm's 53) still gives every part a name of its own. Unchanged when
"<fullname>-<component>" fits. */}}
{{- define "member-export.componentName" -}}
{{- $suffix := printf "-%s" .component -}}
{{- $base := include "member-export.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" -}}
{{- print $base $suffix -}}
{{- end -}}

{{/* The Kafka user a service authenticates as (its own KafkaUser when the chart makes them). */}}
{{- define "member-export.kafkaUser" -}}
{{- include "member-export.componentName" (dict "root" .root "component" .service) -}}
{{- end -}}

{{/* Fail early on Kafka security values that cannot work. */}}
{{- define "member-export.validate" -}}
{{- $k := .Values.kafka -}}
{{- if not (has $k.securityProtocol (list "PLAINTEXT" "SSL" "SASL_SSL" "SASL_PLAINTEXT")) -}}
{{- fail (printf "kafka.securityProtocol must be PLAINTEXT, SSL, SASL_SSL or SASL_PLAINTEXT, not %q" $k.securityProtocol) -}}
{{- end -}}
{{- if hasPrefix "SASL_" $k.securityProtocol -}}
{{- if not (has $k.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail (printf "kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with %s" $k.securityProtocol) -}}
{{- end -}}
{{- if and (not .Values.strimzi.users.enabled) (or (not $k.sasl.username) (not $k.sasl.passwordSecret.name)) -}}
{{- fail "kafka.sasl.username and kafka.sasl.passwordSecret.name are required with SASL" -}}
{{- end -}}
{{- end -}}
{{- if .Values.strimzi.users.enabled -}}
{{- if and (eq .Values.strimzi.users.authentication "tls") (ne $k.securityProtocol "SSL") -}}
{{- fail "strimzi.users.authentication=tls needs kafka.securityProtocol=SSL" -}}
{{- end -}}
{{- if and (hasPrefix "scram" .Values.strimzi.users.authentication) (not (hasPrefix "SASL_" $k.securityProtocol)) -}}
{{- fail "strimzi.users.authentication=scram-sha-512 needs kafka.securityProtocol SASL_SSL (or SASL_PLAINTEXT)" -}}
{{- end -}}
{{- end -}}
{{- $strimziVersions := list "kafka.strimzi.io/v1" "kafka.strimzi.io/v1beta2" -}}
{{- if and (or .Values.strimzi.topics.enabled .Values.strimzi.users.enabled) (not (has .Values.strimzi.apiVersion $strimziVersions)) -}}
{{- fail (printf "strimzi.apiVersion must be kafka.strimzi.io/v1 (Strimzi 0.49 and later) or kafka.strimzi.io/v1beta2 (%s), not %q"
  "Strimzi before 1.0" .Values.strimzi.apiVersion) -}}
{{- end -}}
{{- if and .Values.strimzi.topics.enabled .Values.topics.create -}}
{{- fail "strimzi.topics.enabled: the KafkaTopics own the topics, set topics.create=false" -}}
{{- end -}}
{{- include "member-export.validateConfigExtra" . -}}
{{- include "member-export.validatePartnerMountPath" . -}}
{{- include "member-export.validateSecretDirs" . -}}
{{- include "member-export.validateServiceEnv" . -}}
{{- include "member-export.validateMounts" . -}}
{{- include "member-export.validateExtraVolumes" . -}}
{{- end -}}

{{/* The ConfigMap keys the chart writes from its own values (configmap.yaml), and those values: config.extra may not
set them (tests/unit/test_helm_chart.py holds this list equal to what the ConfigMap writes). */}}
{{- define "member-export.chartConfig" -}}
EXPORT_KAFKA_BOOTSTRAP_SERVERS: kafka.bootstrapServers
EXPORT_TOPIC_PREFIX: topics.prefix
EXPORT_TOPIC_PARTITIONS: topics.partitions
EXPORT_TOPIC_REPLICATION_FACTOR: topics.replicationFactor
EXPORT_TOPICS_CREATE: topics.create
EXPORT_LOG_FORMAT: config.logFormat
EXPORT_LOG_LEVEL: config.logLevel
EXPORT_ALLOWED_DESTINATIONS: config.allowedDestinations
EXPORT_ALLOWED_SECRET_ENV_PREFIXES: config.allowedSecretEnvPrefixes
EXPORT_ALLOWED_SECRET_DIRS: partnerSecrets.mountPath
EXPORT_RUN_LINK_BASE_URL: config.runLinkBaseUrl
EXPORT_ADMIN_PUBLIC_URL: config.adminPublicUrl
{{- end -}}

{{/* One place to set each thing: config.extra may not set a key the chart writes from one of its values (the key
would be in the ConfigMap twice, and which one a service reads is up to the reader), nor a variable the chart sets in
a container's env (member-export.chartEnv: the env wins over the ConfigMap, the extra value would be ignored), nor one
variable twice in two cases (the services read names in any case). */}}
{{- define "member-export.validateConfigExtra" -}}
{{- $root := . -}}
{{- $chart := include "member-export.chartConfig" . | fromYaml -}}
{{- $seen := dict -}}
{{- range $key := keys (.Values.config.extra | default dict) | sortAlpha -}}
{{- $variable := upper $key -}}
{{- with get $chart $variable -}}
{{- $value := $root.Values -}}
{{- range $part := splitList "." . -}}
{{- $value = get $value $part -}}
{{- end -}}
{{- fail (printf "config.extra.%s: the chart sets %s from %s (%s): set %s instead, one place for each setting" $key
  $variable . (toString $value | quote) .) -}}
{{- end -}}
{{- range $service := splitList " " (include "member-export.services" $root) -}}
{{- range $entry := include "member-export.chartEnv" (dict "root" $root "service" $service) | fromYamlArray -}}
{{- if eq (upper $entry.name) $variable -}}
{{- fail (printf "config.extra.%s: the chart sets %s in the %s container from %s, over the ConfigMap: set %s instead"
  $key $variable $service $entry.from $entry.from) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with get $seen $variable -}}
{{- fail (printf "config.extra.%s and config.extra.%s set one variable (the services read names in any case): keep one"
  . $key) -}}
{{- end -}}
{{- $_ := set $seen $variable $key -}}
{{- end -}}
{{- end -}}

{{/* partnerSecrets.mountPath is where the Secret is mounted and, as it is, EXPORT_ALLOWED_SECRET_DIRS: one directory,
so what is mounted is what is allowed. Not a comma (the variable would allow each part and the Secret be mounted at
the literal path) nor space around it (the services trim it); not empty with a Secret to mount. */}}
{{- define "member-export.validatePartnerMountPath" -}}
{{- $path := toString .Values.partnerSecrets.mountPath -}}
{{- if or (contains "," $path) (ne $path (trim $path)) (and (not $path) .Values.partnerSecrets.existingSecret) -}}
{{- fail (printf "partnerSecrets.mountPath: %q must be one directory (%s): the Secret is mounted there, %s" $path
  "no comma, no space around it" "and EXPORT_ALLOWED_SECRET_DIRS (comma-separated, trimmed) allows it as it is") -}}
{{- end -}}
{{- end -}}

{{/* Every value that ends up in EXPORT_ALLOWED_SECRET_DIRS (partnerSecrets.mountPath, and the variable, in any case,
in a service's env or extraEnv; config.extra may not set it), checked as the services check it at start. */}}
{{- define "member-export.validateSecretDirs" -}}
{{- $variable := "EXPORT_ALLOWED_SECRET_DIRS" -}}
{{- $mountPath := .Values.partnerSecrets.mountPath -}}
{{- include "member-export.checkSecretDirs" (dict "name" "partnerSecrets.mountPath" "value" $mountPath) -}}
{{- range $service, $values := .Values.services -}}
{{- range $key, $value := $values.env -}}
{{- if eq (upper $key) $variable -}}
{{- $name := printf "services.%s.env.%s" $service $key -}}
{{- include "member-export.checkSecretDirs" (dict "name" $name "value" $value) -}}
{{- end -}}
{{- end -}}
{{- range $entry := $values.extraEnv -}}
{{- if and (eq (upper (toString $entry.name)) $variable) (hasKey $entry "value") -}}
{{- $name := printf "services.%s.extraEnv[%s]" $service $entry.name -}}
{{- include "member-export.checkSecretDirs" (dict "name" $name "value" $entry.value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* One value of EXPORT_ALLOWED_SECRET_DIRS, (dict "name" <the value's path> "value" <comma-separated directories>):
fail unless each directory is absolute, not /, and neither is, holds nor lies in a directory where Kubernetes mounts
the pod's service-account token (KUBERNETES_SECRETS of shared/domain/secret_references.py, the services' own rule:
they would stop at start). Paths are cleaned first, as the services do ("/var/run/secrets/" is /var/run/secrets);
beside them is allowed (/var/run/secrets/member-export, /var/run/secrets/kubernetes.io-other). */}}
{{- define "member-export.checkSecretDirs" -}}
{{- $name := .name -}}
{{- range $item := splitList "," (toString .value) -}}
{{- $dir := trim $item -}}
{{- if $dir -}}
{{- $clean := clean $dir -}}
{{- if or (not (hasPrefix "/" $clean)) (eq $clean "/") -}}
{{- fail (printf "%s: %q must be an absolute directory other than / (%s)" $name $dir
  "the services stop at start otherwise: EXPORT_ALLOWED_SECRET_DIRS") -}}
{{- end -}}
{{- range $kubernetes := list "/var/run/secrets/kubernetes.io" "/run/secrets/kubernetes.io" -}}
{{- $holds := or (eq $clean $kubernetes) (hasPrefix (print $clean "/") $kubernetes) -}}
{{- if or $holds (hasPrefix (print $kubernetes "/") $clean) -}}
{{- fail (printf "%s: %q would let file: references read %s (%s), %s: %s" $name $dir $kubernetes
  "the pod's Kubernetes service-account token" "and the services stop at start with it in EXPORT_ALLOWED_SECRET_DIRS"
  "name a directory outside it, such as /var/run/secrets/member-export") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Kafka security environment of one service: (dict "root" $ "service" "dispatcher"); each entry's "from" is the
value that sets it (member-export.chartEnv). */}}
{{- define "member-export.kafkaEnv" -}}
{{- $v := .root.Values -}}
{{- $k := $v.kafka -}}
{{- $dir := $k.credentialsDir -}}
{{- $own := $v.strimzi.users.enabled -}}
- {name: EXPORT_KAFKA_SECURITY_PROTOCOL, value: {{ $k.securityProtocol | quote }}, from: kafka.securityProtocol}
{{- if ne $k.securityProtocol "PLAINTEXT" }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.caSecret.name }}
- {name: EXPORT_KAFKA_SSL_CA_FILE, value: {{ printf "%s/ca.crt" $dir | quote }}, from: kafka.tls.caSecret}
{{- end }}
{{- if or $k.tls.clientCertSecret.name (and $own (eq $v.strimzi.users.authentication "tls")) }}
{{- $from := ternary "strimzi.users" "kafka.tls.clientCertSecret" $own }}
- {name: EXPORT_KAFKA_SSL_CERT_FILE, value: {{ printf "%s/client.crt" $dir | quote }}, from: {{ $from }}}
- {name: EXPORT_KAFKA_SSL_KEY_FILE, value: {{ printf "%s/client.key" $dir | quote }}, from: {{ $from }}}
{{- end }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- {name: EXPORT_KAFKA_SASL_MECHANISM, value: {{ $k.sasl.mechanism | quote }}, from: kafka.sasl.mechanism}
- name: EXPORT_KAFKA_SASL_USERNAME
  value: {{ ternary (include "member-export.kafkaUser" .) $k.sasl.username $own | quote }}
  from: {{ ternary "strimzi.users" "kafka.sasl.username" $own }}
- name: EXPORT_KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "%s/sasl-password" $dir | quote }}
  from: {{ ternary "strimzi.users" "kafka.sasl.passwordSecret" $own }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The env entries the chart sets in one service's container, (dict "root" $ "service" "dispatcher"), each with
"from", the value that sets it (left out of the pod spec): services.<service>.env, its extraEnv and config.extra may
not set one of them (member-export.validateServiceEnv). */}}
{{- define "member-export.chartEnv" -}}
{{- $root := .root -}}
{{- $service := .service -}}
{{- $v := $root.Values -}}
{{- $values := index $v.services $service -}}
{{- $port := printf "services.%s.port" $service -}}
{{- if eq $service "admin" }}
- {name: EXPORT_ADMIN_PORT, value: {{ $values.port | quote }}, from: {{ $port }}}
- name: EXPORT_ADMIN_TOKENS_FILE
  value: {{ printf "/etc/member-export/admin/%s" $v.adminTokens.key | quote }}
  from: adminTokens.key
{{- else }}
- {name: EXPORT_METRICS_PORT, value: {{ $values.port | quote }}, from: {{ $port }}}
{{- end }}
- name: EXPORT_CATALOG_URL
  valueFrom: {secretKeyRef: {name: {{ $v.catalog.existingSecret | quote }}, key: {{ $v.catalog.key | quote }}}}
  from: catalog.existingSecret
{{- if has $service (list "extractor" "admin") }}
- name: EXPORT_QUERY_STORE_URL
  valueFrom: {secretKeyRef: {name: {{ $v.queryStore.existingSecret | quote }}, key: {{ $v.queryStore.key | quote }}}}
  from: queryStore.existingSecret
{{- end }}
{{- if and $v.encryption.existingSecret (has $service (list "dispatcher" "admin")) }}
- name: EXPORT_CATALOG_ENCRYPTION_KEYS
  valueFrom: {secretKeyRef: {name: {{ $v.encryption.existingSecret | quote }}, key: {{ $v.encryption.key | quote }}}}
  from: encryption.existingSecret
{{- end }}
{{- if and $v.console.sessionKeySecret.name (eq $service "admin") }}
- name: EXPORT_CONSOLE_SESSION_KEY
  {{- $session := $v.console.sessionKeySecret }}
  valueFrom: {secretKeyRef: {name: {{ $session.name | quote }}, key: {{ $session.key | quote }}}}
  from: console.sessionKeySecret
{{- end }}
{{- if eq $service "notifier" }}
- {name: EXPORT_SMTP_HOST, value: {{ $v.smtp.host | quote }}, from: smtp.host}
- {name: EXPORT_SMTP_PORT, value: {{ $v.smtp.port | quote }}, from: smtp.port}
- {name: EXPORT_SMTP_SECURITY, value: {{ $v.smtp.security | quote }}, from: smtp.security}
- {name: EXPORT_SMTP_SENDER, value: {{ $v.smtp.sender | quote }}, from: smtp.sender}
{{- if $v.smtp.caSecret.name }}
- {name: EXPORT_SMTP_CA_FILE, value: "/etc/member-export/smtp/ca.crt", from: smtp.caSecret}
{{- end }}
{{- with $v.smtp.existingSecret }}
- name: EXPORT_SMTP_USERNAME
  valueFrom: {secretKeyRef: {name: {{ . | quote }}, key: {{ $v.smtp.usernameKey | quote }}}}
  from: smtp.existingSecret
- name: EXPORT_SMTP_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ . | quote }}, key: {{ $v.smtp.passwordKey | quote }}}}
  from: smtp.existingSecret
{{- end }}
{{- end }}
{{ include "member-export.kafkaEnv" . }}
{{- end -}}

{{/* One place to set each variable of a container: services.<service>.env and extraEnv may not name one the chart
sets in it (member-export.chartEnv: the pod spec would hold two entries of one name, of which Kubernetes keeps the
last, silently), nor one variable twice (in two cases: the services read names in any case). Refused rather than
merged: the chart's entries are tied to other parts of the pod (the port to the probes and the containerPort, a
_FILE to the mounted credentials, a URL to its Secret), so the value that sets each one is where to change it. */}}
{{- define "member-export.validateServiceEnv" -}}
{{- $root := . -}}
{{- range $service := splitList " " (include "member-export.services" .) -}}
{{- $values := index $root.Values.services $service -}}
{{- $chart := dict -}}
{{- range $entry := include "member-export.chartEnv" (dict "root" $root "service" $service) | fromYamlArray -}}
{{- $_ := set $chart (upper $entry.name) $entry.from -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $key := keys ($values.env | default dict) | sortAlpha -}}
{{- $name := printf "services.%s.env.%s" $service $key -}}
{{- $check := dict "name" $name "key" $key "service" $service "chart" $chart "seen" $seen -}}
{{- include "member-export.checkEnvName" $check -}}
{{- end -}}
{{- range $entry := $values.extraEnv | default list -}}
{{- $key := toString $entry.name -}}
{{- $name := printf "services.%s.extraEnv[%s]" $service $key -}}
{{- $check := dict "name" $name "key" $key "service" $service "chart" $chart "seen" $seen -}}
{{- include "member-export.checkEnvName" $check -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* One variable a user value sets in a container: (dict "name" <the value's path> "key" <the variable>
"service" <the container> "chart" <variable → the value the chart sets it from> "seen" <variable → the value that
set it>). */}}
{{- define "member-export.checkEnvName" -}}
{{- $variable := upper .key -}}
{{- with get .chart $variable -}}
{{- fail (printf "%s: the chart sets %s in the %s container from %s: set %s instead, one place for each setting (%s)"
  $.name $variable $.service . . "Kubernetes keeps the last of two env entries of one name, silently") -}}
{{- end -}}
{{- with get .seen $variable -}}
{{- fail (printf "%s and %s set one variable of the %s container (the services read names in any case): keep one"
  . $.name $.service) -}}
{{- end -}}
{{- $_ := set .seen $variable .name -}}
{{- end -}}

{{/* The volume mounts of one service's container, (dict "root" $ "service" "dispatcher"), each with "from", the value
(or the chart's choice) that sets its path, left out of the pod spec (member-export.validateMounts). */}}
{{- define "member-export.mounts" -}}
{{- $v := .root.Values -}}
- {name: tmp, mountPath: /tmp, from: "the chart's scratch directory (tmpVolume)"}
{{- if eq .service "migrations" }}
{{- include "member-export.extraVolumeMounts" (dict "root" .root "component" "migrations") }}
{{- else }}
{{- if include "member-export.kafkaVolumeSources" . }}
- name: kafka-credentials
  mountPath: {{ $v.kafka.credentialsDir | quote }}
  readOnly: true
  from: kafka.credentialsDir
{{- end }}
{{- if eq .service "admin" }}
- name: admin-tokens
  mountPath: /etc/member-export/admin
  readOnly: true
  from: "the chart's admin tokens (adminTokens)"
{{- end }}
{{- if and (has .service (list "dispatcher" "notifier")) $v.partnerSecrets.existingSecret }}
- name: partner-secrets
  mountPath: {{ $v.partnerSecrets.mountPath | quote }}
  readOnly: true
  from: partnerSecrets.mountPath
{{- end }}
{{- if and (eq .service "notifier") $v.smtp.caSecret.name }}
- {name: smtp-ca, mountPath: /etc/member-export/smtp, readOnly: true, from: "the chart's SMTP CA (smtp.caSecret)"}
{{- end }}
{{- include "member-export.extraVolumeMounts" (dict "root" .root "component" .service) }}
{{- end }}
{{- end -}}

{{/* The values of one component's own extra volumes: services.<service> or migrations, with its name in messages. */}}
{{- define "member-export.componentValues" -}}
{{- if eq .component "migrations" -}}
{{- toJson (dict "path" "migrations" "values" .root.Values.migrations) -}}
{{- else -}}
{{- toJson (dict "path" (printf "services.%s" .component) "values" (index .root.Values.services .component)) -}}
{{- end -}}
{{- end -}}

{{/* The volumes an operator adds to one pod, (dict "root" $ "component" "notifier"|"migrations"): extraVolumes, then
services.<service>.extraVolumes (migrations.extraVolumes for the migration Job), a YAML list (empty: nothing). */}}
{{- define "member-export.extraVolumes" -}}
{{- $own := include "member-export.componentValues" . | fromJson -}}
{{- $volumes := concat (.root.Values.extraVolumes | default list) ($own.values.extraVolumes | default list) -}}
{{- with $volumes }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* Where one container mounts them, (dict "root" $ "component" ...): extraVolumeMounts, then the component's own,
each with "from", the value that sets it (left out of the pod spec: member-export.validateMounts checks them with
the chart's own mounts). */}}
{{- define "member-export.extraVolumeMounts" -}}
{{- $own := include "member-export.componentValues" . | fromJson -}}
{{- range $i, $mount := .root.Values.extraVolumeMounts | default list }}
- {{ set (deepCopy $mount) "from" (printf "extraVolumeMounts[%d]" $i) | toJson }}
{{- end }}
{{- range $i, $mount := $own.values.extraVolumeMounts | default list }}
- {{ set (deepCopy $mount) "from" (printf "%s.extraVolumeMounts[%d]" $own.path $i) | toJson }}
{{- end }}
{{- end -}}

{{/* Volume names of one pod are unique: an extra volume may not take the name of one of the chart's (tmp,
kafka-credentials, admin-tokens, partner-secrets, smtp-ca) nor of another extra one (the API server refuses the pod). */}}
{{- define "member-export.validateExtraVolumes" -}}
{{- $root := . -}}
{{- $components := splitList " " (include "member-export.services" .) -}}
{{- if .Values.migrations.enabled }}{{ $components = append $components "migrations" }}{{ end -}}
{{- range $component := $components -}}
{{- $seen := dict -}}
{{- if eq $component "migrations" -}}
{{- $_ := set $seen "tmp" "the chart's tmp volume" -}}
{{- else -}}
{{- range $mount := include "member-export.mounts" (dict "root" $root "service" $component) | fromYamlArray -}}
{{- if not (or (hasPrefix "extraVolumeMounts[" $mount.from) (contains ".extraVolumeMounts[" $mount.from)) -}}
{{- $_ := set $seen $mount.name (printf "the chart's %s volume" $mount.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $i, $volume := include "member-export.extraVolumes" (dict "root" $root "component" $component) | fromYamlArray -}}
{{- $name := toString $volume.name -}}
{{- with get $seen $name -}}
{{- fail (printf "extra volume %q of the %s pod has the name of %s: give it another (extraVolumes, %s)" $name
  $component . "services.<service>.extraVolumes, migrations.extraVolumes") -}}
{{- end -}}
{{- $_ := set $seen $name "another extra volume" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Each container's mounts at directories of their own: two at one path (the API server refuses the pod), or one in
a read-only one (a Secret's: no mount point can be made there, the pod never starts), are refused naming both; one
in /tmp is allowed. And partnerSecrets.mountPath, EXPORT_ALLOWED_SECRET_DIRS in every service with or without a
Secret, may not be or hold another mount (file: references would read the Kafka credentials, the admin tokens). */}}
{{- define "member-export.validateMounts" -}}
{{- $root := . -}}
{{- $services := splitList " " (include "member-export.services" .) -}}
{{- $containers := $services -}}
{{- if .Values.migrations.enabled }}{{ $containers = append $containers "migrations" }}{{ end -}}
{{- range $service := $containers -}}
{{- $mounts := include "member-export.mounts" (dict "root" $root "service" $service) | fromYamlArray -}}
{{- range $i, $a := $mounts -}}
{{- range $j, $b := $mounts -}}
{{- $pathA := clean (toString $a.mountPath) -}}
{{- $pathB := clean (toString $b.mountPath) -}}
{{- if and (lt $i $j) (eq $pathA $pathB) -}}
{{- fail (printf "%s (%q) and %s (%q) are one directory in the %s container: give each mount a directory of its own"
  $a.from $a.mountPath $b.from $b.mountPath $service) -}}
{{- end -}}
{{- if and (ne $i $j) $a.readOnly (ne $pathA $pathB) (or (eq $pathA "/") (hasPrefix (print $pathA "/") $pathB)) -}}
{{- fail (printf "%s (%q) lies in %s (%q) in the %s container: %s, %s" $b.from $b.mountPath $a.from $a.mountPath
  $service "a read-only Secret volume, where no mount point can be made (the pod would not start)"
  "give it a directory outside it") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $allowed := toString $root.Values.partnerSecrets.mountPath -}}
{{- if $allowed -}}
{{- $allowed = clean $allowed -}}
{{- range $service := $services -}}
{{- range $mount := include "member-export.mounts" (dict "root" $root "service" $service) | fromYamlArray -}}
{{- $path := clean (toString $mount.mountPath) -}}
{{- $held := or (eq $path $allowed) (eq $allowed "/") (hasPrefix (print $allowed "/") $path) -}}
{{- if and (ne $mount.name "partner-secrets") $held -}}
{{- fail (printf "partnerSecrets.mountPath (%q) is or holds %s (%q) in the %s container: %s, %s"
  $root.Values.partnerSecrets.mountPath $mount.from $mount.mountPath $service
  "it is EXPORT_ALLOWED_SECRET_DIRS, and file: references would read what is mounted there"
  "give the partner secrets a directory of their own") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The projected volume of one service's Kafka credentials (nothing with PLAINTEXT and no secret). */}}
{{- define "member-export.kafkaVolumeSources" -}}
{{- $v := .root.Values -}}
{{- $k := $v.kafka -}}
{{- $own := $v.strimzi.users.enabled -}}
{{- $user := include "member-export.kafkaUser" . -}}
{{- if ne $k.securityProtocol "PLAINTEXT" }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.caSecret.name }}
- secret:
    name: {{ $k.tls.caSecret.name }}
    items: [{key: {{ $k.tls.caSecret.key }}, path: ca.crt}]
{{- end }}
{{- if and $own (eq $v.strimzi.users.authentication "tls") }}
- secret:
    name: {{ $user }}
    items: [{key: user.crt, path: client.crt}, {key: user.key, path: client.key}]
{{- else if $k.tls.clientCertSecret.name }}
- secret:
    name: {{ $k.tls.clientCertSecret.name }}
    items: [{key: {{ $k.tls.clientCertSecret.certKey }}, path: client.crt}, {key: {{ $k.tls.clientCertSecret.keyKey }}, path: client.key}]
{{- end }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- secret:
    name: {{ ternary $user $k.sasl.passwordSecret.name $own }}
    items: [{key: {{ ternary "password" $k.sasl.passwordSecret.key $own }}, path: sasl-password}]
{{- end }}
{{- end }}
{{- end -}}

{{/* An egress rule from a {cidrs, peers, ports} value; nothing when it names no destination. */}}
{{- define "member-export.egressRule" -}}
{{- if or .cidrs .peers }}
- to:
    {{- range .cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
    {{- with .peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range .ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}

{{/* The topics the code uses (shared/topics.py, Topics(prefix).all(); tests/unit/test_helm_chart.py holds them
equal): run-requests, member-batches by priority, run-events, dead-letters. */}}
{{- define "member-export.topicNames" -}}
{{- $p := .Values.topics.prefix -}}
{{- $names := list (print $p "exports.run-requests") (print $p "exports.member-batches.high") (print $p "exports.member-batches") (print $p "exports.member-batches.low") (print $p "exports.run-events") (print $p "exports.dead-letters") -}}
{{- join " " $names -}}
{{- end -}}

{{/* The consumer group of a service (shared/runtime.py: <prefix>member-export-<service>). */}}
{{- define "member-export.consumerGroup" -}}
{{- printf "%smember-export-%s" .root.Values.topics.prefix .service -}}
{{- end -}}


{{/* The pods' ServiceAccount: the release's own when serviceAccount.create (serviceAccount.name, else the full name),
else serviceAccount.name, an existing one; empty: none named (the namespace's default). */}}
{{- define "member-export.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "member-export.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}


{{/* The migration Job's ServiceAccount: with serviceAccount.create, a hook one of its own (the release's is not there
yet when a pre-install hook runs), named after the release's with "-migrations"; else the pods' (an existing one, or
none: the namespace's default). */}}
{{- define "member-export.migrationsServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- if .Values.serviceAccount.name -}}
{{- printf "%s-migrations" (.Values.serviceAccount.name | trunc 52 | trimSuffix "-") -}}
{{- else -}}
{{- include "member-export.componentName" (dict "root" . "component" "migrations") -}}
{{- end -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
