{{/* Names, labels and small decisions shared by the templates. */}}

{{- define "capstan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-capstan, or the release name alone when it already contains
the chart name (so `helm install capstan` gives "capstan", not "capstan-capstan").
*/}}
{{- define "capstan.fullname" -}}
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

{{- define "capstan.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (a Deployment's selector is immutable). */}}
{{- define "capstan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capstan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "capstan.labels" -}}
helm.sh/chart: {{ include "capstan.chart" . }}
{{ include "capstan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: capstan
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "capstan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "capstan.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "capstan.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the named controller is enabled: include "capstan.enabled" (list . "pipeline") */}}
{{- define "capstan.enabled" -}}
{{- $root := index . 0 }}
{{- if has (index . 1) $root.Values.controllers }}true{{ end }}
{{- end }}

{{/* "true" when some enabled controller restarts or scales workloads (apps/v1). */}}
{{- define "capstan.needsWorkloads" -}}
{{- $c := .Values.controllers }}
{{- if or (has "secret-rotation" $c) (has "service-scaling" $c) (has "pipeline" $c) }}true{{ end }}
{{- end }}

{{/* The namespaced capstan.dev kinds of the enabled controllers, as resource plurals. */}}
{{- define "capstan.namespacedKinds" -}}
{{- $kinds := list }}
{{- if has "secret-rotation" .Values.controllers }}{{ $kinds = append $kinds "secretrotations" }}{{ end }}
{{- if has "service-scaling" .Values.controllers }}{{ $kinds = append $kinds "servicescalings" }}{{ end }}
{{- if has "pipeline" .Values.controllers }}{{ $kinds = append $kinds "pipelines" }}{{ end }}
{{- toJson $kinds }}
{{- end }}

{{/*
Rules for namespaced resources. Rendered once into the ClusterRole when Capstan
watches every namespace, or into a Role per watched namespace when watchNamespaces
is set. Each rule says why it exists.
*/}}
{{- define "capstan.namespacedRules" -}}
{{- $kinds := include "capstan.namespacedKinds" . | fromJsonArray }}
{{- if $kinds }}
# The namespaced Capstan kinds: watched by their controllers (get/list/watch) and
# patched for the finalizer each controller adds, so that cleanup (e.g. a delivery
# Secret with deletionPolicy Delete, a Pipeline's Jobs) runs before the object goes.
- apiGroups: ["capstan.dev"]
  resources: {{ toJson $kinds }}
  verbs: ["get", "list", "watch", "patch"]
# Status is written by server-side apply of the status subresource.
- apiGroups: ["capstan.dev"]
  resources:
    {{- range $kinds }}
    - {{ . }}/status
    {{- end }}
  verbs: ["patch"]
# Objects Capstan creates (delivery Secrets, Pipeline Jobs) carry a controller
# ownerReference with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
# admission plugin allows only with update on the owner's finalizers subresource.
- apiGroups: ["capstan.dev"]
  resources:
    {{- range $kinds }}
    - {{ . }}/finalizers
    {{- end }}
  verbs: ["update"]
{{- end }}
# Events on transitions and errors: each one a create (no series, nothing patched).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- if include "capstan.enabled" (list . "secret-rotation") }}
# Secrets in tenants' namespaces: the kubernetes backend (current and pending Secrets),
# database admin credentials a SecretRotation refers to, and delivery Secrets, written
# by server-side apply (create for the first apply, patch after; update for
# read-modify-write with a resourceVersion precondition). Capstan never deletes a
# backend Secret: `delete` is here only for delivery Secrets whose SecretRotation says
# `deletionPolicy: Delete`, removed when that SecretRotation is deleted.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}
{{- if include "capstan.needsWorkloads" . }}
# Workloads: SecretRotation restarts the rollouts that consume a rotated credential
# (a patch of the pod template's restartedAt annotation, like `kubectl rollout
# restart`), ServiceScaling patches replicas, Pipeline patches images and rolls back.
# list/watch: rollouts may be chosen by label selector and are awaited until done.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- if include "capstan.enabled" (list . "pipeline") }}
# Pipeline test, build and smoke stages run as Jobs; finished Jobs of superseded runs
# are deleted (with their Pods, by the garbage collector).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete"]
{{- end }}
{{- end }}
