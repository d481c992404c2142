{{/*
Names and labels shared by every template.
*/}}

{{- define "mlplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
Truncated to 52 characters so that suffixes such as "-metrics" keep names within 63.
*/}}
{{- define "mlplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mlplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mlplane.labels" -}}
helm.sh/chart: {{ include "mlplane.chart" . }}
{{ include "mlplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlplane
{{- end -}}

{{- define "mlplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The operator image: repository@digest when a digest is given, else repository:tag.
*/}}
{{- define "mlplane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mlplane.rayImage" -}}
{{- printf "%s:%s" .Values.rayImage.repository (default .Chart.AppVersion .Values.rayImage.tag) -}}
{{- end -}}

{{/*
A Kubernetes name from a file name: lower case, [a-z0-9-] only, at most 63 characters.
*/}}
{{- define "mlplane.fileToName" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trunc 63 | trimAll "-" -}}
{{- end -}}

{{/*
RBAC rules the operator needs inside each namespace it watches. Exact verbs and resources,
no wildcards, no Secrets. Why each rule exists is written beside it.
*/}}
{{- define "mlplane.rbac.namespacedRules" -}}
# Kopf watches its kinds and patches them for finalizers and its progress annotations.
- apiGroups: ["mlplane.dev"]
  resources: ["trainingjobs", "modeldeployments", "abtests"]
  verbs: ["get", "list", "watch", "patch"]
# Drift-triggered retraining creates a TrainingJob.
- apiGroups: ["mlplane.dev"]
  resources: ["trainingjobs"]
  verbs: ["create"]
# The operator writes only status (conditions, phase, observedGeneration) of its kinds.
- apiGroups: ["mlplane.dev"]
  resources: ["trainingjobs/status", "modeldeployments/status", "abtests/status"]
  verbs: ["patch"]
# TrainingJobs become RayJobs, ModelDeployments RayServices (KubeRay).
- apiGroups: ["ray.io"]
  resources: ["rayjobs", "rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Each ModelDeployment's request-id signing Secret (operator/handlers/signing.py): read back
# by name, created once, patched to rotate. No list/watch: no other Secret is ever enumerated.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Preemption detection: the DisruptionTarget condition of Ray worker pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Kopf and the operator report what they do as Events (both Event APIs).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/*
Cluster-scoped rules, needed whatever namespaces are watched.
*/}}
{{- define "mlplane.rbac.clusterRules" -}}
# Kopf discovers its resources and notices CRDs being installed or removed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# Preemption detection: capacity labels and termination taints of nodes.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- if .Values.operator.watchNamespaces }}
# With explicit namespaces Kopf lists and watches namespaces to follow their lifecycle.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}
