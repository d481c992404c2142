# A production-shaped installation: pinned zones, a NAT gateway per zone, named cluster admins,
# L40S GPUs (g6e) with a diversified spot group, S3 access logs to a central log bucket, a
# permissions boundary on every role, two team namespaces, and monitoring through the
# Prometheus Operator when it is installed.

module "mlplane" {
  source = "../.."

  name               = "mlplane-prod"
  kubernetes_version = "1.34"

  # Network
  vpc_cidr             = "10.60.0.0/16"
  availability_zones   = var.availability_zones
  single_nat_gateway   = false
  enable_vpc_flow_logs = true

  # API access: admins from the office and CI, everything else through the private endpoint.
  endpoint_public_access       = true
  endpoint_public_access_cidrs = var.api_allowed_cidrs
  cluster_admin_principal_arns = var.cluster_admin_principal_arns

  system_node_group = {
    instance_types = ["m7i.2xlarge", "m6i.2xlarge"]
    min_size       = 2
    desired_size   = 3
    max_size       = 8
    disk_size_gib  = 100
  }

  gpu_on_demand_node_group = {
    instance_types = ["g6e.xlarge", "g6e.2xlarge"]
    accelerator    = "nvidia-l40s"
    min_size       = 0
    desired_size   = 0
    max_size       = 4
    disk_size_gib  = 300
  }

  # Same GPU in every size: any of them can take a worker, so a shortage of one type in one
  # zone does not stall training.
  gpu_spot_node_group = {
    instance_types = ["g6e.xlarge", "g6e.2xlarge", "g6e.4xlarge", "g6e.8xlarge"]
    accelerator    = "nvidia-l40s"
    min_size       = 0
    desired_size   = 0
    max_size       = 16
    disk_size_gib  = 300
  }

  # Storage
  noncurrent_version_expiration_days = 14
  access_log_bucket                  = var.access_log_bucket
  training_data_buckets = [
    { bucket = var.datasets_bucket, prefix = "curated/" },
  ]

  # Identities
  iam_permissions_boundary_arn = var.iam_permissions_boundary_arn
  mlplane_namespace            = "mlplane-system"
  workload_namespaces          = ["ml-research", "ml-production"]

  # Charts
  kuberay_chart_version    = "1.7.0"
  mlplane_chart_repository = var.mlplane_chart_repository
  mlplane_chart_version    = var.mlplane_chart_version
  mlflow_tracking_uri      = var.mlflow_tracking_uri
  mlplane_extra_values = [
    yamlencode({
      serviceMonitor = {
        enabled          = var.prometheus_operator_installed
        additionalLabels = { release = "kube-prometheus-stack" }
      }
      prometheusRule = { enabled = var.prometheus_operator_installed }
      dashboards     = { enabled = true }
    }),
  ]

  tags = {
    environment = "production"
    team        = "ml-platform"
    cost-center = "ml-0042"
  }
}
