{{/*
Names, labels, the image, the relay's and migrate's containers, and the
checks that refuse values the relay could not run with.
*/}}

{{- define "outbox-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "outbox-relay.fullname" -}}
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

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "outbox-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "outbox-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "outbox-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "outbox-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "outbox-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The port of OUTBOX_HTTP_ADDR: probes and scraping go there. */}}
{{- define "outbox-relay.httpPort" -}}
{{- $addr := toString (default "0.0.0.0:9464" .Values.config.OUTBOX_HTTP_ADDR) }}
{{- if eq $addr "none" }}
{{- fail "config.OUTBOX_HTTP_ADDR none turns off the port the probes and /metrics need" }}
{{- end }}
{{- $port := regexFind "[0-9]+$" $addr }}
{{- if not $port }}
{{- fail (printf "config.OUTBOX_HTTP_ADDR %q has no port" $addr) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
Refuses what the relay must not get from values: a secret in the
ConfigMap, a setting given twice, a mode that does not exist.
*/}}
{{- define "outbox-relay.validate" -}}
{{- $secrets := list "OUTBOX_DATABASE_URL" "OUTBOX_AMQP_URL" "OUTBOX_GRPC_TOKEN" "OUTBOX_ADMIN_TOKEN" }}
{{- range $key, $value := .Values.config }}
{{- if has $key $secrets }}
{{- fail (printf "config.%s: secrets are read from files only; set secret.files.%s_FILE to a key of the Secret %q" $key $key $.Values.secret.name) }}
{{- end }}
{{- if hasKey $.Values.secret.files $key }}
{{- fail (printf "config.%s: it is a file of the Secret; set it under secret.files" $key) }}
{{- end }}
{{- if not (hasPrefix "OUTBOX_" $key) }}
{{- fail (printf "config.%s: only OUTBOX_* settings of the binary belong here" $key) }}
{{- end }}
{{- end }}
{{- if not (has .Values.mode (list "standalone" "sidecar")) }}
{{- fail (printf "mode %q: standalone or sidecar" .Values.mode) }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- if not .Values.app.containers }}
{{- fail "mode sidecar needs the application's containers in app.containers" }}
{{- end }}
{{- if semverCompare "<1.29-0" .Capabilities.KubeVersion.Version }}
{{- fail "mode sidecar needs Kubernetes 1.29 or later (native sidecars: init containers with restartPolicy Always)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret's files as env: SETTING=mountPath/key. */}}
{{- define "outbox-relay.secretEnv" -}}
{{- range $setting, $key := .Values.secret.files }}
{{- if $key }}
- name: {{ $setting }}
  value: {{ printf "%s/%s" $.Values.secret.mountPath $key | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "outbox-relay.hasSecretFiles" -}}
{{- range $setting, $key := .Values.secret.files }}{{ if $key }}yes{{ end }}{{ end }}
{{- end }}

{{- define "outbox-relay.volumeMounts" -}}
{{- if include "outbox-relay.hasSecretFiles" . }}
- name: outbox-secrets
  mountPath: {{ .Values.secret.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The relay: `run`, its HTTP port, its probes. */}}
{{- define "outbox-relay.relayContainer" -}}
- name: outbox-relay
  image: {{ include "outbox-relay.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.mode "sidecar" }}
  # A native sidecar: started before the application's containers, kept
  # running beside them, stopped after them.
  restartPolicy: Always
  {{- end }}
  args: ["run"]
  envFrom:
    - configMapRef:
        name: {{ include "outbox-relay.fullname" . }}
  {{- with include "outbox-relay.secretEnv" . | trim }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with include "outbox-relay.volumeMounts" . | trim }}
  volumeMounts:
    {{- . | nindent 4 }}
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ include "outbox-relay.httpPort" . }}
      protocol: TCP
  startupProbe:
    httpGet: {path: "/readyz?exclude=worker", port: metrics}
    {{- toYaml .Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet: {path: /livez, port: metrics}
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
{{- end }}

{{/* `migrate` before the relay: the same settings, the database only. */}}
{{- define "outbox-relay.migrateContainer" -}}
- name: outbox-migrate
  image: {{ include "outbox-relay.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate"]
  envFrom:
    - configMapRef:
        name: {{ include "outbox-relay.fullname" . }}
  {{- with include "outbox-relay.secretEnv" . | trim }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with include "outbox-relay.volumeMounts" . | trim }}
  volumeMounts:
    {{- . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.migrate.resources | nindent 4 }}
{{- end }}
