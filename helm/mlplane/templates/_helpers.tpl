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
An image reference by tag as well as by digest: repository:tag@sha256:... when a digest is
given (the runtime pulls by digest, so a moved tag changes nothing, and the tag stays for
humans), else repository:tag. The tag defaults to the chart's appVersion.
Argument: the image's values (repository, tag, digest) and the chart's appVersion, as a dict.
*/}}
{{- define "mlplane.imageRef" -}}
{{- $ref := printf "%s:%s" .image.repository (default .appVersion .image.tag) -}}
{{- if .image.digest -}}
{{- $ref = printf "%s@%s" $ref .image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/*
The operator image.
*/}}
{{- define "mlplane.image" -}}
{{- include "mlplane.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/*
The Ray image of RayJobs and RayServices that name none of their own.
*/}}
{{- define "mlplane.rayImage" -}}
{{- include "mlplane.imageRef" (dict "image" .Values.rayImage "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/*
A Kubernetes name from a file name: lower case, [a-z0-9-] only, at most 63 characters.
*/}}
{{- define "mlplane.fileToName" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trunc 63 | trimAll "-" -}}
{{- end -}}

{{/*
RBAC rules the operator needs inside each namespace it watches. Exact verbs and resources,
no wildcards; Secrets only get/create (never list/watch). Why each rule exists is written beside it.
*/}}
{{- define "mlplane.rbac.namespacedRules" -}}
# ModelDeployments, ABTests: Kopf list+watch (on.event, timers and the kopf.index of each kind
# in operator/handlers/{modeldeployment,abtest}.py) and patch (its finalizer and progress
# annotations, kopf.AnnotationsProgressStorage in operator/handlers/__init__.py). Nothing GETs
# them: Kopf works from its watch stream.
- apiGroups: ["mlplane.dev"]
  resources: ["modeldeployments", "abtests"]
  verbs: ["list", "watch", "patch"]
# TrainingJobs: as above (operator/handlers/trainingjob.py), plus create and get for
# drift-triggered retraining: KubeRayPlatform.create (operator/platforms/kuberay.py) creates the
# retraining TrainingJob and, on a 409, gets it to check its owner; _retrains in
# operator/handlers/modeldeployment.py lists them by label.
- apiGroups: ["mlplane.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "create"]
# Status only (conditions, phase, observedGeneration), never spec: Kopf's patch of the status
# subresource with every handler's status result (operator/handlers/*.py).
- apiGroups: ["mlplane.dev"]
  resources: ["trainingjobs/status", "modeldeployments/status", "abtests/status"]
  verbs: ["patch"]
# RayJobs, RayServices: list+watch for the kopf.index of owned children (trainingjob.py,
# modeldeployment.py); KubeRayPlatform.create, .patch (merge patch) and .get (after a 409, or
# when the index lags) in operator/platforms/kuberay.py. No update (PUT). Children go with their
# owner through ownerReferences (the garbage collector deletes them); the one delete is of a
# TrainingJob's own on-demand RayJob when it returns to spot (KubeRayPlatform.delete_owned,
# spec.preemption.returnToSpot), owner checked, with the RayJob's uid as a precondition.
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# RayServices: the same without delete (a ModelDeployment's RayService goes with its owner).
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Secrets, by name only (no list/watch: no other Secret is ever enumerated): each Ray cluster's
# token Secret (KubeRayPlatform.ensure_cluster_access: create, get to check the owner of one that
# exists; never rewritten) and each ModelDeployment's request-id signing Secret
# (operator/handlers/signing.py: read back, created once, patched to rotate).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# NetworkPolicies: the same, for each Ray cluster's policy (builders/access.py).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
# Pods: Kopf list+watch for on.event("", "v1", "pods") in operator/handlers/trainingjob.py
# (preemption evidence: the DisruptionTarget condition of Ray worker pods).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events: kopf.info / kopf.warn (operator/handlers/*.py) and Kopf's own handler reports, which
# Kopf POSTs as core v1 Events (kopf/_cogs/clients/events.py); it never patches them and never
# uses events.k8s.io.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/*
Cluster-scoped rules, needed whatever namespaces are watched.
*/}}
{{- define "mlplane.rbac.clusterRules" -}}
# CRDs: Kopf's resource observer list+watches them to notice mlplane's and KubeRay's kinds being
# installed or removed (kopf/_core/reactor/observation.py); discovery itself reads /apis.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# Nodes: Kopf list+watch for on.event("", "v1", "nodes") in operator/handlers/trainingjob.py
# (capacity labels and termination taints of spot nodes).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- if .Values.operator.watchNamespaces }}
# Namespaces: with explicit namespaces, Kopf's namespace observer list+watches them to follow
# their lifecycle (kopf/_core/reactor/observation.py).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}

{{/*
The namespaces whose Ray clusters the PodMonitors scrape: the watched ones, else all.
*/}}
{{- define "mlplane.monitoredNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
matchNames:
  {{- toYaml .Values.operator.watchNamespaces | nindent 2 }}
{{- else }}
any: true
{{- end }}
{{- end }}

{{/*
Prometheus' pod labels as k=v,k=v (MLPLANE_PROMETHEUS_POD_LABELS).
*/}}
{{- define "mlplane.prometheusPodLabels" -}}
{{- $pairs := list }}
{{- range $k, $v := .Values.prometheus.podLabels }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The Secret holding the token Prometheus sends to the serving apps' /admin/metrics. */}}
{{- define "mlplane.scrapeTokenSecret" -}}
{{- default (printf "%s-serving-scrape" (include "mlplane.fullname" .)) .Values.servingMonitor.scrapeTokenSecret -}}
{{- end -}}
