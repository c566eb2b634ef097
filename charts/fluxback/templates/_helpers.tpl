{{/* Names, labels and the rendered configuration file. */}}

{{- define "fluxback.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fluxback.fullname" -}}
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

{{- define "fluxback.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fluxback.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fluxback.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fluxback.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fluxback.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fluxback.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fluxback.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the webhook key(s): the user's, or the one the chart generates. */}}
{{- define "fluxback.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "fluxback.fullname" .)) .Values.webhook.existingSecret }}
{{- end }}

{{- define "fluxback.adminSecretName" -}}
{{- default (printf "%s-admin" (include "fluxback.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{- define "fluxback.fluxSecretName" -}}
{{- default (include "fluxback.fullname" .) .Values.flux.existingSecret }}
{{- end }}

{{/*
A key generated once: the value already in the cluster when there is one (so upgrades keep it),
else a new random one. Returns it base64-encoded, as Secret data holds it.
Arguments: (list $ secretName key).
*/}}
{{- define "fluxback.keptRandom" -}}
{{- $root := index . 0 }}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (index . 1) }}
{{- $data := dig "data" (index . 2) "" ($existing | default dict) }}
{{- if $data }}{{ $data }}{{ else }}{{ randAlphaNum 48 | b64enc }}{{ end }}
{{- end }}

{{/* Mount points of the secret files; the config names files below them. */}}
{{- define "fluxback.secretsDir" -}}/etc/fluxback/secrets{{- end }}

{{/*
The configuration file: what the chart manages (listen address, journal, secret file paths,
Kubernetes access), with `.Values.config` merged over it.
*/}}
{{- define "fluxback.config" -}}
{{- $dir := include "fluxback.secretsDir" . }}
{{- $webhookKeys := list }}
{{- range .Values.webhook.keys }}
{{- $webhookKeys = append $webhookKeys (printf "%s/webhook/%s" $dir .) }}
{{- end }}
{{- $webhook := dict "hmac_keys" list "bearer_tokens" list }}
{{- if eq .Values.webhook.auth "hmac" }}
{{- $_ := set $webhook "hmac_keys" $webhookKeys }}
{{- else }}
{{- $_ := set $webhook "bearer_tokens" $webhookKeys }}
{{- end }}
{{- $config := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.service.port))
  "webhook" $webhook
  "admin_tokens" (list (printf "%s/admin/%s" $dir .Values.adminToken.key))
  "log" (dict "format" "json")
}}
{{- if .Values.cluster }}
{{- $_ := set $config "cluster" .Values.cluster }}
{{- end }}
{{- if eq .Values.journal.type "postgresql" }}
{{- $_ := set $config "journal" .Values.journal.postgresql.dsn }}
{{- $_ := set $config "journal_password_file" (printf "%s/journal/%s" $dir .Values.journal.postgresql.passwordSecret.key) }}
{{- else }}
{{- $_ := set $config "journal" "sqlite:///var/lib/fluxback/journal.db" }}
{{- end }}
{{- $instances := dict }}
{{- range $name, $instance := include "fluxback.airflowInstances" . | fromJson }}
{{- $rendered := dict "url" $instance.url }}
{{- $files := printf "%s/airflow/%s" $dir $name }}
{{- if eq $instance.auth "basic" }}
{{- $_ := set $rendered "username_file" (printf "%s/username" $files) }}
{{- $_ := set $rendered "password_file" (printf "%s/password" $files) }}
{{- else if eq $instance.auth "token" }}
{{- $_ := set $rendered "token_file" (printf "%s/token" $files) }}
{{- end }}
{{- $_ := set $instances $name $rendered }}
{{- end }}
{{- $_ := set $config "airflow" (dict "default_instance" .Values.airflow.name "instances" $instances) }}
{{- $repositories := list }}
{{- range $i, $repo := .Values.git.repositories }}
{{- $rendered := dict "name" $repo.name "url" $repo.url }}
{{- $files := printf "%s/git/%d" $dir $i }}
{{- if eq (default "none" $repo.auth) "token" }}
{{- $_ := set $rendered "token_file" (printf "%s/token" $files) }}
{{- else if eq $repo.auth "ssh" }}
{{- $_ := set $rendered "ssh_key_file" (printf "%s/ssh-key" $files) }}
{{- $_ := set $rendered "ssh_known_hosts_file" (printf "%s/known_hosts" $files) }}
{{- end }}
{{- if $repo.allowedSigners }}
{{- $_ := set $rendered "allowed_signers_file" (printf "%s/allowed_signers" $files) }}
{{- end }}
{{- $repositories = append $repositories $rendered }}
{{- end }}
{{- $_ := set $config "git" (dict "cache_dir" "/var/cache/fluxback/git" "repositories" $repositories "objects" .Values.git.objects) }}
{{- if .Values.kubernetes.enabled }}
{{- $_ := set $config "kubernetes" (dict "enabled" true "namespaces" .Values.kubernetes.namespaces "resync_seconds" .Values.kubernetes.resyncSeconds "events" .Values.kubernetes.events) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $config (deepCopy .Values.config)) }}
{{- end }}

{{/* Whether the journal allows several replicas. */}}
{{- define "fluxback.postgresql" -}}
{{- if eq .Values.journal.type "postgresql" }}true{{ end }}
{{- end }}

{{/* The Kubernetes access `kubernetes.enabled` needs, and nothing more. */}}
{{- define "fluxback.rbacRules" -}}
- apiGroups: [kustomize.toolkit.fluxcd.io]
  resources: [kustomizations]
  verbs: [get, list, watch]
- apiGroups: [helm.toolkit.fluxcd.io]
  resources: [helmreleases]
  verbs: [get, list, watch]
- apiGroups: [source.toolkit.fluxcd.io]
  resources: [gitrepositories, ocirepositories]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Every Airflow instance by name, as JSON: the main one and the extra ones. */}}
{{- define "fluxback.airflowInstances" -}}
{{- $main := pick .Values.airflow "url" "auth" "existingSecret" }}
{{- toJson (merge (dict .Values.airflow.name $main) .Values.airflow.extraInstances) }}
{{- end }}
