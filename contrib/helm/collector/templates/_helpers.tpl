{{/* Names and labels, as `helm create` writes them. */}}
{{- define "collector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "collector.fullname" -}}
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

{{- define "collector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "collector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "collector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "collector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "collector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "collector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "collector.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "collector.leaseName" -}}
{{- default (include "collector.fullname" .) .Values.kubernetes.leaseName }}
{{- end }}

{{/* True ("true") when a full `config` replaces the preset. */}}
{{- define "collector.customConfig" -}}
{{- if .Values.config }}true{{- end }}
{{- end }}

{{/*
What the collector reads from the Kubernetes API, as YAML (the RBAC templates render it):
  podNamespaces: [..] (a Role each) | clusterPods: true (a ClusterRole)
  nodes, persistentVolumes, persistentVolumeClaims, podMetrics: bools
  leases: [names] in the release's namespace
Preset kubernetes: pods only (the preset meters neither nodes nor volumes), plus its Lease.
A custom config: whatever its `kubernetes` receivers and `kubernetes_lease` coordinators ask for
(docs/components/kubernetes-receiver.md, "RBAC").
*/}}
{{- define "collector.apiNeeds" -}}
{{- $needs := dict "podNamespaces" list "clusterPods" false "nodes" false "persistentVolumes" false "persistentVolumeClaims" false "podMetrics" false "leases" list }}
{{- if include "collector.customConfig" . }}
{{- range $id, $rc := (.Values.config.receivers | default dict) }}
{{- if eq (first (splitList "/" $id)) "kubernetes" }}
{{- $rc = $rc | default dict }}
{{- $ns := $rc.namespaces | default list }}
{{- if kindIs "string" $ns }}{{- $ns = splitList "," $ns | compact }}{{- end }}
{{- if $ns }}
{{- $_ := set $needs "podNamespaces" (concat $needs.podNamespaces $ns | uniq) }}
{{- else }}
{{- $_ := set $needs "clusterPods" true }}
{{- end }}
{{- if $rc.nodes }}{{- $_ := set $needs "nodes" true }}{{- end }}
{{- if $rc.persistent_volumes }}{{- $_ := set $needs "persistentVolumes" true }}{{- end }}
{{- if $rc.persistent_volume_claims }}{{- $_ := set $needs "persistentVolumeClaims" true }}{{- end }}
{{- if and $rc.usage $rc.usage.enabled }}{{- $_ := set $needs "podMetrics" true }}{{- end }}
{{- end }}
{{- end }}
{{- range $id, $cc := (.Values.config.coordinators | default dict) }}
{{- if eq (first (splitList "/" $id)) "kubernetes_lease" }}
{{- $cc = $cc | default dict }}
{{- $_ := set $needs "leases" (append $needs.leases ($cc.name | default "collector")) }}
{{- end }}
{{- end }}
{{- else if eq .Values.preset "kubernetes" }}
{{- if .Values.kubernetes.namespaces }}
{{- $_ := set $needs "podNamespaces" .Values.kubernetes.namespaces }}
{{- else }}
{{- $_ := set $needs "clusterPods" true }}
{{- end }}
{{- $_ := set $needs "leases" (list (include "collector.leaseName" .)) }}
{{- end }}
{{- toYaml $needs }}
{{- end }}

{{/* The pod reads the Kubernetes API at all (else its service-account token is not mounted). */}}
{{- define "collector.usesApi" -}}
{{- $n := include "collector.apiNeeds" . | fromYaml }}
{{- if or $n.podNamespaces $n.clusterPods $n.nodes $n.persistentVolumes $n.persistentVolumeClaims $n.podMetrics $n.leases }}true{{- end }}
{{- end }}

{{/* The receiver ports the Service exposes (preset http-server: its ingest port). */}}
{{- define "collector.receiverPorts" -}}
{{- if include "collector.customConfig" . }}
{{- toYaml (.Values.service.receiverPorts | default list) }}
{{- else if eq .Values.preset "http-server" }}
{{- toYaml (list (dict "name" "http" "port" (int .Values.service.port) "protocol" "TCP")) }}
{{- else }}
{{- toYaml list }}
{{- end }}
{{- end }}

{{- define "collector.gracePeriod" -}}
{{- $grace := .Values.terminationGracePeriodSeconds | default (add (int .Values.drainTimeoutSeconds) 15) | int }}
{{- if le $grace (int .Values.drainTimeoutSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above drainTimeoutSeconds (%d): the kubelet kills the pod before the drain ends" $grace (int .Values.drainTimeoutSeconds)) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* Checks that fail the install with a message rather than deploy something that misbehaves. */}}
{{- define "collector.validate" -}}
{{- $presets := list "http-server" "kubernetes" "runai" }}
{{- if not (include "collector.customConfig" .) }}
{{- if not (has .Values.preset $presets) }}
{{- fail (printf "preset %q is not one of %s (or set `config`)" .Values.preset (join ", " $presets)) }}
{{- end }}
{{- if and (eq .Values.preset "runai") (gt (int .Values.replicaCount) 1) }}
{{- fail "preset runai has no leader election: replicaCount must be 1, or every replica bills the same workloads" }}
{{- end }}
{{- if eq .Values.preset "runai" }}
{{- if not .Values.runai.url }}{{- fail "preset runai needs runai.url" }}{{- end }}
{{- if and (not .Values.runai.existingSecret) (not (and .Values.runai.appId .Values.runai.appSecret)) }}
{{- fail "preset runai needs runai.appId and runai.appSecret, or runai.existingSecret" }}
{{- end }}
{{- end }}
{{- else }}
{{- with .Values.config.storage }}{{- if .directory }}
{{- fail "config.storage.directory: leave it out and set storage.mountPath (the chart passes it as COLLECTOR_STORAGE_DIRECTORY, where the volume is mounted)" }}
{{- end }}{{- end }}
{{- end }}
{{- end }}

{{/* The secret values the chart stores itself (key -> value); empty when every secret is an existingSecret. */}}
{{- define "collector.secretData" -}}
{{- $data := dict }}
{{- if and .Values.openmeter.token (not .Values.openmeter.existingSecret) }}
{{- $_ := set $data "openmeter-token" .Values.openmeter.token }}
{{- end }}
{{- if and .Values.ingest.token (not .Values.ingest.existingSecret) }}
{{- $_ := set $data "ingest-token" .Values.ingest.token }}
{{- end }}
{{- if and (eq .Values.preset "runai") (not .Values.runai.existingSecret) (not (include "collector.customConfig" .)) }}
{{- $_ := set $data "runai-app-id" .Values.runai.appId }}
{{- $_ := set $data "runai-app-secret" .Values.runai.appSecret }}
{{- end }}
{{- toYaml $data }}
{{- end }}
