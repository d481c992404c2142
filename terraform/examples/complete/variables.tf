variable "region" {
  description = "AWS region to install into."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Zones of the VPC, pinned so that subnets never move."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "api_allowed_cidrs" {
  description = "CIDR blocks of the office and CI runners allowed to reach the public API endpoint."
  type        = list(string)
}

variable "cluster_admin_principal_arns" {
  description = "IAM roles of the platform team (e.g. an SSO permission set's role) given cluster-admin."
  type        = list(string)
  default     = []
}

variable "access_log_bucket" {
  description = "The organisation's central S3 access log bucket."
  type        = string
  default     = null
}

variable "datasets_bucket" {
  description = "Bucket with the curated training datasets (training pods read its curated/ prefix)."
  type        = string
  default     = "example-ml-datasets"
}

variable "iam_permissions_boundary_arn" {
  description = "Permissions boundary the organisation requires on IAM roles, if any."
  type        = string
  default     = null
}

variable "mlplane_chart_repository" {
  description = "OCI repository of released mlplane charts; null installs the chart from this repository's helm/ folder."
  type        = string
  default     = null
}

variable "mlplane_chart_version" {
  description = "Released mlplane chart version (with mlplane_chart_repository)."
  type        = string
  default     = null
}

variable "mlflow_tracking_uri" {
  description = "MLflow tracking server holding the model registry."
  type        = string
  default     = "https://mlflow.ml.example.com"
}

variable "prometheus_operator_installed" {
  description = "Whether kube-prometheus-stack (the Prometheus Operator CRDs) runs in the cluster, so mlplane can ship its ServiceMonitor and PrometheusRules."
  type        = bool
  default     = false
}
