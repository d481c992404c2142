variable "cluster_name" {
  description = "Name of the EKS cluster the charts are installed in (the cluster autoscaler discovers its node groups by it)."
  type        = string
}

variable "region" {
  description = "AWS region of the cluster. Passed to the cluster autoscaler explicitly because pods cannot reach instance metadata (hop limit 1)."
  type        = string
}

variable "system_node_selector" {
  description = "Node selector of the on-demand CPU pool where the mlplane operator, KubeRay, the cluster autoscaler and Ray heads run."
  type        = map(string)
  default     = { "mlplane.dev/pool" = "system" }
}

variable "gpu_taint" {
  description = "The taint GPU nodes carry, in Kubernetes form, so that only pods that tolerate it (GPU workers) land there."
  type = object({
    key    = string
    value  = string
    effect = string
  })
  default = { key = "nvidia.com/gpu", value = "true", effect = "NoSchedule" }

  validation {
    condition     = contains(["NoSchedule", "PreferNoSchedule", "NoExecute"], var.gpu_taint.effect)
    error_message = "gpu_taint.effect must be NoSchedule, PreferNoSchedule or NoExecute."
  }
}

variable "spot_taint" {
  description = "The taint spot GPU nodes carry (the operator tolerates it for workers allowed on spot), so that node DaemonSets such as NVIDIA's device plugin tolerate it too."
  type = object({
    key    = string
    value  = string
    effect = string
  })
  default = { key = "mlplane.dev/spot", value = "true", effect = "NoSchedule" }

  validation {
    condition     = contains(["NoSchedule", "PreferNoSchedule", "NoExecute"], var.spot_taint.effect)
    error_message = "spot_taint.effect must be NoSchedule, PreferNoSchedule or NoExecute."
  }
}

variable "capacity_label_convention" {
  description = "Which node labels tell spot from on-demand capacity, for the operator's placement and preemption accounting: eks (eks.amazonaws.com/capacityType), karpenter (karpenter.sh/capacity-type) or gke (cloud.google.com/gke-spot)."
  type        = string
  default     = "eks"

  validation {
    condition     = contains(["eks", "karpenter", "gke"], var.capacity_label_convention)
    error_message = "capacity_label_convention must be one of eks, karpenter, gke."
  }
}

variable "helm_timeout_seconds" {
  description = "How long each Helm release may take to become ready before the apply fails (and, being atomic, rolls back)."
  type        = number
  default     = 600

  validation {
    condition     = var.helm_timeout_seconds >= 60 && var.helm_timeout_seconds <= 3600
    error_message = "helm_timeout_seconds must be between 60 and 3600."
  }
}

# --- KubeRay ----------------------------------------------------------------------------------

variable "kuberay_chart_version" {
  description = "Version of the kuberay-operator chart (https://ray-project.github.io/kuberay-helm/). mlplane's builders are tested against this KubeRay's CRD schemas."
  type        = string
  default     = "1.7.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.-]+)?$", var.kuberay_chart_version))
    error_message = "kuberay_chart_version must be an exact semantic version such as 1.7.0."
  }
}

variable "kuberay_namespace" {
  description = "Namespace of the KubeRay operator."
  type        = string
  default     = "kuberay-system"
}

# --- NVIDIA device plugin -----------------------------------------------------------------------

variable "install_nvidia_device_plugin" {
  description = "Install NVIDIA's device plugin, which advertises nvidia.com/gpu on GPU nodes. The EKS NVIDIA AMI ships the driver and container toolkit but not the plugin; turn this off only if the GPU operator or another plugin is installed."
  type        = bool
  default     = true
}

variable "nvidia_device_plugin_chart_version" {
  description = "Version of the nvidia-device-plugin chart (https://nvidia.github.io/k8s-device-plugin)."
  type        = string
  default     = "0.19.0"
}

# --- Cluster autoscaler -------------------------------------------------------------------------

variable "install_cluster_autoscaler" {
  description = "Install the Kubernetes cluster autoscaler, which scales the node groups (GPU groups from zero) to pending pods. Turn off if Karpenter or another autoscaler manages capacity."
  type        = bool
  default     = true
}

variable "cluster_autoscaler_chart_version" {
  description = "Version of the cluster-autoscaler chart (https://kubernetes.github.io/autoscaler)."
  type        = string
  default     = "9.59.0"
}

variable "cluster_autoscaler_image_tag" {
  description = "Cluster autoscaler image tag; it should match the cluster's Kubernetes minor version (e.g. v1.34.2). Null keeps the chart's default."
  type        = string
  default     = null
}

variable "cluster_autoscaler_service_account" {
  description = "Service account of the cluster autoscaler and the IAM role it assumes (IRSA). Required when install_cluster_autoscaler is true."
  type = object({
    namespace = string
    name      = string
    role_arn  = string
  })
  default = null
}

# --- mlplane ----------------------------------------------------------------------------------

variable "install_mlplane" {
  description = "Install the mlplane chart (operator, CRDs, RBAC, monitoring). Off installs only the platform underneath it."
  type        = bool
  default     = true
}

variable "mlplane_chart_path" {
  description = "Local path of the mlplane chart, used when mlplane_chart_repository is null."
  type        = string
  default     = null
}

variable "mlplane_chart_repository" {
  description = "Chart repository of the mlplane chart, e.g. oci://ghcr.io/example/charts. Null installs from mlplane_chart_path."
  type        = string
  default     = null

  validation {
    condition     = var.mlplane_chart_repository == null || can(regex("^(oci|https)://", var.mlplane_chart_repository))
    error_message = "mlplane_chart_repository must be an oci:// or https:// URL."
  }
}

variable "mlplane_chart_version" {
  description = "Version of the mlplane chart to install from mlplane_chart_repository. Null takes the newest (pin it in production)."
  type        = string
  default     = null
}

variable "mlplane_namespace" {
  description = "Namespace of the mlplane operator."
  type        = string
  default     = "mlplane-system"
}

variable "workload_namespaces" {
  description = "Namespaces where TrainingJobs and ModelDeployments run. This module creates the training and serving service accounts in each, bound to their IAM roles."
  type        = list(string)
  default     = ["mlplane"]

  validation {
    condition     = length(var.workload_namespaces) > 0 && alltrue([for ns in var.workload_namespaces : can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", ns)) && length(ns) <= 63])
    error_message = "workload_namespaces must hold at least one namespace, each a DNS label."
  }
}

variable "create_workload_namespaces" {
  description = "Create the workload namespaces. Turn off when they are managed elsewhere (e.g. by Argo CD); they must then exist before apply."
  type        = bool
  default     = true
}

variable "api_server_cidrs" {
  description = "Where the Kubernetes API server's endpoints are, for the operator's NetworkPolicy egress rule. On EKS with private endpoint access: the VPC CIDR."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.api_server_cidrs) > 0 && alltrue([for c in var.api_server_cidrs : can(cidrhost(c, 0))])
    error_message = "api_server_cidrs must hold at least one valid CIDR block."
  }
}

variable "service_accounts" {
  description = "The mlplane service accounts and the IAM roles (IRSA) each one assumes: the operator's lives in mlplane_namespace (the chart creates it); training and serving ones, under the same name, in every workload namespace (this module creates them), each annotated with its namespace's own role from role_arns (namespace => role ARN). A missing or null role leaves an account without a role annotation."
  type = object({
    operator = object({ name = string, role_arn = optional(string) })
    training = object({ name = string, role_arns = optional(map(string), {}) })
    serving  = object({ name = string, role_arns = optional(map(string), {}) })
  })

  validation {
    condition = alltrue([
      for kind in ["training", "serving"] :
      alltrue([for ns in keys(var.service_accounts[kind].role_arns) : contains(var.workload_namespaces, ns)])
    ])
    error_message = "service_accounts.training.role_arns and serving.role_arns may only name workload_namespaces."
  }

  validation {
    condition = alltrue([
      for sa in [var.service_accounts.operator, var.service_accounts.training, var.service_accounts.serving] :
      can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", sa.name)) && length(sa.name) <= 253
    ])
    error_message = "Service account names must be DNS subdomains (lowercase letters, digits, '-' and '.')."
  }

  validation {
    condition     = var.service_accounts.training.name != var.service_accounts.serving.name
    error_message = "Training and serving need distinct service accounts: they are bound to roles with different S3 rights."
  }
}

variable "bucket_name" {
  description = "The checkpoints and artifacts bucket. The operator gets s3://<bucket_name> as its artifacts URI and puts default checkpoints under checkpoints/<namespace>/<name> there."
  type        = string
}

variable "mlflow_tracking_uri" {
  description = "URI of the MLflow tracking server that holds the model registry (e.g. https://mlflow.example.com). Required when install_mlplane is true."
  type        = string
  default     = null

  validation {
    condition     = var.mlflow_tracking_uri == null || can(regex("^https?://[^\\s/$.?#].[^\\s]*$", var.mlflow_tracking_uri))
    error_message = "mlflow_tracking_uri must be an http:// or https:// URL."
  }
}

variable "mlplane_extra_values" {
  description = "Extra values documents (YAML) for the mlplane chart, applied after the ones this module computes, so they win."
  type        = list(string)
  default     = []
}
