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

{{/* The namespaced capstan.dev kinds of the enabled controllers, as resource plurals. */}}
{{- define "capstan.namespacedKinds" -}}
{{- $kinds := list }}
{{- if has "secret-rotation" .Values.controllers }}{{ $kinds = append $kinds "secretrotations" }}{{ end }}
{{- if has "service-scaling" .Values.controllers }}{{ $kinds = append $kinds "servicescalings" }}{{ end }}
{{- if has "pipeline" .Values.controllers }}{{ $kinds = append $kinds "pipelines" }}{{ $kinds = append $kinds "approvals" }}{{ end }}
{{- toJson $kinds }}
{{- end }}

{{/*
Rules for namespaced resources. Rendered once into the ClusterRole when Capstan
watches every namespace, or into a Role per watched namespace when watchNamespaces
is set. Each rule says why it exists.
*/}}
{{- define "capstan.namespacedRules" -}}
{{- $c := .Values.controllers }}
{{- $kinds := include "capstan.namespacedKinds" . | fromJsonArray }}
{{- if $kinds }}
# The namespaced Capstan kinds, watched by their controllers (SecretRotations as
# metadata only, read whole with get when reconciled; the Pipeline controller watches
# Approvals and marks each Honoured or Void in its status).
- apiGroups: ["capstan.dev"]
  resources: {{ toJson $kinds }}
  verbs: ["get", "list", "watch"]
# Status is written by server-side apply of the status subresource.
- apiGroups: ["capstan.dev"]
  resources:
    {{- range $kinds }}
    - {{ . }}/status
    {{- end }}
  verbs: ["patch"]
{{- end }}
{{- if has "service-scaling" $c }}
# ServiceScaling adds and removes its finalizer (a patch of metadata.finalizers), so
# that the Application Auto Scaling objects it declared are removed before it goes.
- apiGroups: ["capstan.dev"]
  resources: ["servicescalings"]
  verbs: ["patch"]
{{- end }}
{{- if has "secret-rotation" $c }}
# SecretRotation records the ECS deployments it started in an annotation (a merge
# patch), and claims each rotation step with a status update conditioned on the
# resourceVersion (a PUT of the status subresource), so that two managers can never
# both perform a step.
- apiGroups: ["capstan.dev"]
  resources: ["secretrotations"]
  verbs: ["patch"]
- apiGroups: ["capstan.dev"]
  resources: ["secretrotations/status"]
  verbs: ["update"]
# Delivery Secrets with `deletionPolicy: Delete` carry a controller ownerReference with
# blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission plugin
# allows only with update on the owner's finalizers subresource. The garbage collector,
# not Capstan, deletes them with their SecretRotation.
- apiGroups: ["capstan.dev"]
  resources: ["secretrotations/finalizers"]
  verbs: ["update"]
# Secrets in tenants' namespaces: the kubernetes backend (current and pending Secrets,
# read with get, created, then replaced with a resourceVersion precondition), database
# admin credentials a SecretRotation refers to (get), and delivery Secrets (server-side
# apply: create for the first apply, patch after). Never list, watch or delete: Capstan
# reads only the Secrets an object names, and never deletes one.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "update"]
# Workloads that consume a rotated credential are restarted like `kubectl rollout
# restart` (a patch of the pod template's restartedAt annotation); get/list find them
# by name or label selector and poll their rollout until done. Only SecretRotation
# touches workloads: ServiceScaling and Pipeline act on ECS.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "patch"]
{{- end }}
{{- if has "pipeline" $c }}
# Pipeline claims each action (a run, a stage) with a status update conditioned on the
# resourceVersion (a PUT of the status subresource).
- apiGroups: ["capstan.dev"]
  resources: ["pipelines/status"]
  verbs: ["update"]
# Its Jobs carry a controller ownerReference with blockOwnerDeletion (the garbage
# collector removes them with their Pipeline), which the
# OwnerReferencesPermissionEnforcement admission plugin allows only with update on the
# owner's finalizers subresource.
- apiGroups: ["capstan.dev"]
  resources: ["pipelines/finalizers"]
  verbs: ["update"]
# Job stages: create the stage's Job (named by run, stage and attempt), list the run's
# Jobs, and watch them (stage transitions follow their watch events); delete a running
# Job of a run that a new revision supersedes (concurrencyPolicy: Supersede), with its
# Pods.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "list", "watch", "delete"]
# The results of a completed Job: its Pod's termination message (a list by the Job's
# job-name label).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end }}
# Events on transitions and errors: each one a create (no series, nothing patched).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The ValidatingAdmissionPolicy (and binding) that verifies Approvals' approvers. */}}
{{- define "capstan.approvalPolicyName" -}}
{{- default (printf "%s-approvals" (include "capstan.fullname" .)) .Values.approvals.policy.name }}
{{- end }}

{{- define "capstan.pipelinePolicyName" -}}
{{- printf "%s-pipelines" (include "capstan.fullname" .) }}
{{- end }}

{{- /* The labels and annotations templates/crds.yaml adds to each CRD, indented for
its metadata (each line ends with a newline). */}}
{{- define "capstan.crdMetadata" -}}
{{- if .Values.crds.keep -}}
{{ "  annotations:\n    helm.sh/resource-policy: keep\n" }}
{{- end -}}
{{ "  labels:\n" }}{{ include "capstan.labels" . | indent 4 }}{{ "\n" }}
{{- end }}
