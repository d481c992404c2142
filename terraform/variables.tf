# --- General ----------------------------------------------------------------------------------

variable "name" {
  description = "Name of the installation: the EKS cluster's name and the prefix of IAM roles and the default bucket name. 2-20 lowercase letters, digits or hyphens."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name))
    error_message = "name must be 2-20 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "tags" {
  description = "Tags added to every AWS resource (merged over mlplane's own tags)."
  type        = map(string)
  default     = {}
}

variable "iam_permissions_boundary_arn" {
  description = "ARN of a managed policy set as permissions boundary on every IAM role this module creates, where the organisation requires one. Null sets none."
  type        = string
  default     = null

  validation {
    condition     = var.iam_permissions_boundary_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:policy/.+$", var.iam_permissions_boundary_arn))
    error_message = "iam_permissions_boundary_arn must be null or an IAM policy ARN."
  }
}

# --- Network ----------------------------------------------------------------------------------

variable "create_vpc" {
  description = "Create a VPC (private subnets for nodes, public subnets for load balancers, NAT) with terraform-aws-modules/vpc. False puts the cluster into an existing VPC given by vpc_id and private_subnet_ids."
  type        = bool
  default     = true
}

variable "vpc_cidr" {
  description = "CIDR block of the created VPC (create_vpc = true). /16 to /18: each availability zone gets a private subnet of 1/16 of it, the public subnets take a sixteenth together."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be a valid IPv4 CIDR block between /16 and /18."
  }
}

variable "availability_zones" {
  description = "Availability zones of the created VPC, 2 to 6 (e.g. [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]). Null takes the region's first three. Spread GPU spot groups over as many zones as possible: spot capacity differs per zone."
  type        = list(string)
  default     = null

  validation {
    condition     = var.availability_zones == null || (length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6)
    error_message = "availability_zones must be null or hold 2 to 6 zones."
  }
}

variable "single_nat_gateway" {
  description = "Share one NAT gateway between all zones (cheaper, but a zone outage cuts the others' egress). False creates one per zone."
  type        = bool
  default     = false
}

variable "enable_vpc_flow_logs" {
  description = "Send the created VPC's flow logs to CloudWatch Logs."
  type        = bool
  default     = true
}

variable "vpc_id" {
  description = "ID of an existing VPC to use when create_vpc is false."
  type        = string
  default     = null

  validation {
    condition     = var.create_vpc || (var.vpc_id != null && can(regex("^vpc-[0-9a-f]{8,17}$", coalesce(var.vpc_id, "-"))))
    error_message = "With create_vpc = false, vpc_id must be an existing VPC's ID (vpc-...)."
  }
}

variable "vpc_cidr_blocks" {
  description = "CIDR blocks of the existing VPC (create_vpc = false), used to narrow the mlplane operator's NetworkPolicy egress to the API server. Empty leaves it open to any address on the API ports."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.vpc_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "vpc_cidr_blocks must hold valid CIDR blocks."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two, in different zones) of the existing VPC for the nodes and the control plane's network interfaces, when create_vpc is false. They need a route to the internet or VPC endpoints for ECR, S3, STS and EKS."
  type        = list(string)
  default     = []

  validation {
    condition     = var.create_vpc || length(var.private_subnet_ids) >= 2
    error_message = "With create_vpc = false, give at least two private_subnet_ids."
  }

  validation {
    condition     = alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "private_subnet_ids must be subnet IDs (subnet-...)."
  }
}

# --- Cluster ----------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "Kubernetes <major>.<minor> version of the EKS control plane and node groups. Upgrade one minor version at a time."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.34."
  }
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API endpoint publicly (limited to endpoint_public_access_cidrs). Off by default: the API is reachable only from inside the VPC (or peered networks, a VPN, a bastion), where Terraform must then run too, since it installs the charts. Turn on, with CIDRs, when Terraform, helm or kubectl run outside the VPC; the private endpoint is always on."
  type        = bool
  default     = false
}

variable "endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the public API endpoint, e.g. your office or CI egress addresses. Required (non-empty) when endpoint_public_access is true: there is no open default."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "endpoint_public_access_cidrs must hold valid CIDR blocks."
  }

  validation {
    condition     = !var.endpoint_public_access || length(var.endpoint_public_access_cidrs) > 0
    error_message = "endpoint_public_access is true: list the CIDR blocks allowed to reach the API (0.0.0.0/0 only if you really mean it)."
  }
}

variable "cluster_admin_principal_arns" {
  description = "IAM roles or users given cluster-admin through EKS access entries (the identity running Terraform gets it anyway)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.cluster_admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "cluster_admin_principal_arns must be IAM role or user ARNs."
  }
}

# --- Node groups ------------------------------------------------------------------------------

variable "system_node_group" {
  description = "The on-demand CPU node group (label mlplane.dev/pool=system) for the mlplane operator, KubeRay, the cluster autoscaler, CoreDNS and Ray heads. Ray heads hold the job's driver and GCS: size the instances for them."
  type = object({
    instance_types = optional(list(string), ["m6i.2xlarge", "m7i.2xlarge"])
    min_size       = optional(number, 2)
    max_size       = optional(number, 6)
    desired_size   = optional(number, 2)
    disk_size_gib  = optional(number, 100)
  })
  default = {}

  validation {
    condition     = length(var.system_node_group.instance_types) > 0
    error_message = "system_node_group.instance_types must not be empty."
  }

  validation {
    condition     = var.system_node_group.min_size >= 1 && var.system_node_group.min_size <= var.system_node_group.desired_size && var.system_node_group.desired_size <= var.system_node_group.max_size
    error_message = "system_node_group needs 1 <= min_size <= desired_size <= max_size: the operator and KubeRay must always have a node."
  }

  validation {
    condition     = var.system_node_group.disk_size_gib >= 20 && var.system_node_group.disk_size_gib <= 16384
    error_message = "system_node_group.disk_size_gib must be between 20 and 16384."
  }
}

variable "gpu_on_demand_node_group" {
  description = "The on-demand GPU node group (NVIDIA AMI, taint nvidia.com/gpu=true:NoSchedule, labels mlplane.dev/pool=gpu-on-demand and mlplane.dev/accelerator=<accelerator>). All instance types must carry the same GPU model, named by accelerator. Scales from zero."
  type = object({
    enabled        = optional(bool, true)
    instance_types = optional(list(string), ["g5.xlarge", "g5.2xlarge"])
    accelerator    = optional(string, "nvidia-a10g")
    min_size       = optional(number, 0)
    max_size       = optional(number, 4)
    desired_size   = optional(number, 0)
    disk_size_gib  = optional(number, 200)
  })
  default = {}

  validation {
    condition     = length(var.gpu_on_demand_node_group.instance_types) > 0
    error_message = "gpu_on_demand_node_group.instance_types must not be empty."
  }

  validation {
    condition     = length(distinct([for t in var.gpu_on_demand_node_group.instance_types : split(".", t)[0]])) == 1
    error_message = "gpu_on_demand_node_group.instance_types must belong to one instance family (one GPU model): the group carries a single accelerator label."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.gpu_on_demand_node_group.accelerator)) && length(var.gpu_on_demand_node_group.accelerator) <= 63
    error_message = "gpu_on_demand_node_group.accelerator must be a label value such as nvidia-a10g (lowercase, digits, '-', '.')."
  }

  validation {
    condition     = var.gpu_on_demand_node_group.min_size >= 0 && var.gpu_on_demand_node_group.min_size <= var.gpu_on_demand_node_group.desired_size && var.gpu_on_demand_node_group.desired_size <= var.gpu_on_demand_node_group.max_size && var.gpu_on_demand_node_group.max_size >= 1
    error_message = "gpu_on_demand_node_group needs 0 <= min_size <= desired_size <= max_size and max_size >= 1."
  }

  validation {
    condition     = var.gpu_on_demand_node_group.disk_size_gib >= 50 && var.gpu_on_demand_node_group.disk_size_gib <= 16384
    error_message = "gpu_on_demand_node_group.disk_size_gib must be between 50 and 16384 (CUDA images are large)."
  }
}

variable "gpu_spot_node_group" {
  description = "The spot GPU node group (as the on-demand one, with capacity_type SPOT and label mlplane.dev/pool=gpu-spot). List several instance types of the same GPU model: spot capacity is found per type and zone, so diversification is what keeps workers running."
  type = object({
    enabled        = optional(bool, true)
    instance_types = optional(list(string), ["g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge"])
    accelerator    = optional(string, "nvidia-a10g")
    min_size       = optional(number, 0)
    max_size       = optional(number, 8)
    desired_size   = optional(number, 0)
    disk_size_gib  = optional(number, 200)
  })
  default = {}

  validation {
    condition     = length(var.gpu_spot_node_group.instance_types) >= 2
    error_message = "gpu_spot_node_group.instance_types needs at least two instance types: a single spot pool runs dry too easily."
  }

  validation {
    condition     = length(distinct([for t in var.gpu_spot_node_group.instance_types : split(".", t)[0]])) == 1
    error_message = "gpu_spot_node_group.instance_types must belong to one instance family (one GPU model): the group carries a single accelerator label."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.gpu_spot_node_group.accelerator)) && length(var.gpu_spot_node_group.accelerator) <= 63
    error_message = "gpu_spot_node_group.accelerator must be a label value such as nvidia-a10g (lowercase, digits, '-', '.')."
  }

  validation {
    condition     = var.gpu_spot_node_group.min_size >= 0 && var.gpu_spot_node_group.min_size <= var.gpu_spot_node_group.desired_size && var.gpu_spot_node_group.desired_size <= var.gpu_spot_node_group.max_size && var.gpu_spot_node_group.max_size >= 1
    error_message = "gpu_spot_node_group needs 0 <= min_size <= desired_size <= max_size and max_size >= 1."
  }

  validation {
    condition     = var.gpu_spot_node_group.disk_size_gib >= 50 && var.gpu_spot_node_group.disk_size_gib <= 16384
    error_message = "gpu_spot_node_group.disk_size_gib must be between 50 and 16384 (CUDA images are large)."
  }
}

# --- Storage ----------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the checkpoints and artifacts bucket. Null derives a unique one: <name>-mlplane-<account id>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", coalesce(var.bucket_name, "-")))
    error_message = "bucket_name must be null or 3-63 lowercase letters, digits or hyphens (no dots: they break TLS to S3)."
  }
}

variable "bucket_force_destroy" {
  description = "Let terraform destroy delete the bucket with everything in it. Only for throwaway environments."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which overwritten or deleted object versions in the bucket expire."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be between 1 and 3650."
  }
}

variable "access_log_bucket" {
  description = "Existing bucket that receives the artifacts bucket's S3 server access logs. Null disables access logging."
  type        = string
  default     = null
}

variable "training_data_buckets" {
  description = "Buckets (and optional key prefixes) holding training data that training pods may read, e.g. [{ bucket = \"ml-team-data\", prefix = \"churn/\" }]. Read-only; objects encrypted with a customer-managed KMS key also need kms:Decrypt granted in that key's policy."
  type = list(object({
    bucket = string
    prefix = optional(string, "")
  }))
  default = []

  validation {
    condition     = alltrue([for b in var.training_data_buckets : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", b.bucket)) && !strcontains(b.prefix, "*")])
    error_message = "training_data_buckets entries need a valid bucket name and a prefix without wildcards."
  }
}

# --- Identities -------------------------------------------------------------------------------

variable "mlplane_namespace" {
  description = "Namespace of the mlplane operator (its service account is bound to the operator IAM role)."
  type        = string
  default     = "mlplane-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.mlplane_namespace)) && length(var.mlplane_namespace) <= 63
    error_message = "mlplane_namespace must be a DNS label."
  }
}

variable "workload_namespaces" {
  description = "Team namespaces where TrainingJobs and ModelDeployments run. Each gets its own training and serving IAM roles (<name>-<namespace>-training/-serving), limited to s3://<bucket>/checkpoints/<namespace>/ and artifacts/<namespace>/, and its own training and serving service accounts, the only ones that may assume them."
  type        = list(string)
  default     = ["mlplane"]

  validation {
    condition     = length(var.workload_namespaces) > 0 && alltrue([for ns in var.workload_namespaces : can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", ns)) && length(ns) <= 63])
    error_message = "workload_namespaces must hold at least one namespace, each a DNS label."
  }

  validation {
    condition     = length(distinct(var.workload_namespaces)) == length(var.workload_namespaces)
    error_message = "workload_namespaces must not repeat a namespace."
  }

  validation {
    condition     = alltrue([for ns in var.workload_namespaces : length("${var.name}-${ns}-training") <= 64])
    error_message = "Each namespace's IAM role is named <name>-<namespace>-training, at most 64 characters: shorten name or the namespace."
  }
}

variable "create_workload_namespaces" {
  description = "Create the workload namespaces with Terraform. False when they are managed elsewhere; they must exist before apply."
  type        = bool
  default     = true
}

variable "operator_service_account" {
  description = "Name of the mlplane operator's service account in mlplane_namespace."
  type        = string
  default     = "mlplane-operator"
}

variable "training_service_account" {
  description = "Name of the service account Ray training pods (RayJob head and workers) run as."
  type        = string
  default     = "mlplane-training"
}

variable "serving_service_account" {
  description = "Name of the service account Ray Serve pods (RayService head and workers) run as."
  type        = string
  default     = "mlplane-serving"
}

# --- Charts -----------------------------------------------------------------------------------

variable "kuberay_chart_version" {
  description = "Version of the kuberay-operator chart."
  type        = string
  default     = "1.7.0"
}

variable "install_nvidia_device_plugin" {
  description = "Install NVIDIA's device plugin (GPUs become schedulable as nvidia.com/gpu). Off only if the GPU operator or another plugin is installed."
  type        = bool
  default     = true
}

variable "nvidia_device_plugin_chart_version" {
  description = "Version of the nvidia-device-plugin chart."
  type        = string
  default     = "0.19.0"
}

variable "install_cluster_autoscaler" {
  description = "Install the cluster autoscaler (and its IAM role) so that node groups, GPU ones from zero, follow pending pods. Off when Karpenter or another autoscaler manages capacity."
  type        = bool
  default     = true
}

variable "cluster_autoscaler_chart_version" {
  description = "Version of the cluster-autoscaler chart."
  type        = string
  default     = "9.59.0"
}

variable "cluster_autoscaler_image_tag" {
  description = "Cluster autoscaler image tag matching kubernetes_version (e.g. v1.34.2). Null keeps the chart's default."
  type        = string
  default     = null
}

variable "install_mlplane" {
  description = "Install the mlplane chart. False stops at the platform (cluster, bucket, roles, KubeRay), e.g. to install mlplane through GitOps with the mlplane_values output."
  type        = bool
  default     = true
}

variable "mlplane_chart_path" {
  description = "Local path of the mlplane chart. Null means ../helm/mlplane relative to this module (the chart in this repository)."
  type        = string
  default     = null
}

variable "mlplane_chart_repository" {
  description = "OCI or HTTPS chart repository to install the mlplane chart from instead of a local path, e.g. oci://ghcr.io/example/charts."
  type        = string
  default     = null
}

variable "mlplane_chart_version" {
  description = "Chart version to install from mlplane_chart_repository (pin it in production)."
  type        = string
  default     = null
}

variable "mlflow_tracking_uri" {
  description = "URI of the MLflow tracking server holding the model registry, e.g. https://mlflow.example.com. Required when install_mlplane is true."
  type        = string
  default     = null
}

variable "mlplane_extra_values" {
  description = "Extra YAML values documents for the mlplane chart, applied last (e.g. image digests, ServiceMonitor settings)."
  type        = list(string)
  default     = []
}
