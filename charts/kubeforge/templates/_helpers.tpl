{{/* Names, labels, images and the operator's RBAC rules, shared by the templates. */}}

{{- define "kubeforge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it already contains the chart name. */}}
{{- define "kubeforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kubeforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the release's life (a Deployment's selector is immutable). */}}
{{- define "kubeforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "kubeforge.labels" -}}
helm.sh/chart: {{ include "kubeforge.chart" . }}
{{ include "kubeforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubeforge
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubeforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The leader-election Lease, in the release namespace. */}}
{{- define "kubeforge.leaseName" -}}
{{- default (printf "%s-leader" (include "kubeforge.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/* repository@digest, or repository:tag (tag defaults to the appVersion). */}}
{{- define "kubeforge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "kubeforge.helperImage" -}}
{{- default (include "kubeforge.image" .) .Values.helperImage }}
{{- end }}

{{/*
What the operator does through the API, verb by verb (operator/kubeforge/k8s/client.py: reads, list+watch,
server-side apply = PATCH, which creates an absent object and so needs `create` too; merge patches of
the status subresource; DELETE of children no longer wanted; POST of Events). No Secrets, no wildcards.
The informers (controllers/informer.py) list and watch every kind below that they cache; discovery
(`/apis/<group>/<version>`) is open to every authenticated user. The leader-election Lease is not here:
it is a Role of its own in the release namespace (rbac.yaml).
*/}}
{{- define "kubeforge.rbacRules" -}}
# Our two kinds: cached and watched.
- apiGroups: ["kubeforge.io"]
  resources: ["modeldeployments", "trainingjobs"]
  verbs: ["get", "list", "watch"]
# The train -> serve hand-off applies the ModelDeployment that serves a trained model.
- apiGroups: ["kubeforge.io"]
  resources: ["modeldeployments"]
  verbs: ["create", "patch"]
# Status is ours (the spec is the user's: never written).
- apiGroups: ["kubeforge.io"]
  resources: ["modeldeployments/status", "trainingjobs/status"]
  verbs: ["get", "patch", "update"]
# Children carry an owner reference with blockOwnerDeletion: true; where the
# OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift), setting it needs
# `update` on the owner's finalizers subresource. The operator adds no finalizers.
- apiGroups: ["kubeforge.io"]
  resources: ["modeldeployments/finalizers", "trainingjobs/finalizers"]
  verbs: ["update"]
# The children: applied (PATCH, may create), watched, deleted when no longer wanted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# While a model cache of new sources fills, the serving Deployment keeps its template and only
# follows the ModelDeployment's replicas, through its /scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# a NetworkPolicy per ModelDeployment and TrainingJob (networkPolicy.enabled)
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A replica spanning several nodes runs as a LeaderWorkerSet group (sigs.k8s.io/lws), only where
# leaderworkerset.x-k8s.io is served; LWS itself creates the group's pods and headless Service.
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A canary split by a Gateway (spec.rollout.canary.gateway): the HTTPRoute the operator weights, only
# where gateway.networking.k8s.io is served.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ... and, while a model cache of new sources fills, it follows the replicas through /scale.
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets/scale"]
  verbs: ["patch"]
# The model cache (spec.cache.size): the claim the operator creates, and deletes when no longer wanted.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Pods are only observed (readiness, exit codes, scheduling problems); their Jobs/Deployments own them.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# list: why a Job could not create its workers (its FailedCreate Events: a quota, a policy)
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
{{- if .Values.rbac.keda }}
# KEDA ScaledObjects (rbac.keda): autoscaling from zero, only where keda.sh is served.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.rbac.prometheusOperator }}
# Prometheus-operator ServiceMonitors (rbac.prometheusOperator), only where monitoring.coreos.com is served.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- end }}
