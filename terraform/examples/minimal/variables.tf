variable "region" {
  description = "AWS region to install into."
  type        = string
  default     = "us-west-2"
}

variable "name" {
  description = "Name of the installation (the EKS cluster's name)."
  type        = string
  default     = "mlplane-sandbox"
}

variable "api_allowed_cidrs" {
  description = "CIDR blocks allowed to reach the cluster's public API endpoint: the addresses Terraform, helm and kubectl run from, e.g. [\"203.0.113.0/24\"]."
  type        = list(string)
}

variable "mlflow_tracking_uri" {
  description = "MLflow tracking server the operator resolves models with."
  type        = string
  default     = "http://mlflow.mlflow.svc.cluster.local:5000"
}
