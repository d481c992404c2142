# mlplane on Amazon EKS: a VPC (or an existing one), an EKS cluster with a CPU system node group
# and GPU node groups on on-demand and spot capacity, an encrypted bucket for checkpoints and
# artifacts, IAM roles for the mlplane service accounts (IRSA), and the charts: KubeRay, NVIDIA's
# device plugin, the cluster autoscaler and mlplane itself.
#
# This module configures no provider. The caller configures aws, helm and kubernetes (the last
# two from this module's cluster outputs): see examples/.

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Read only when availability_zones is null, and then the first three zone names in sorted order are used, so a zone AWS adds later (it gets a later letter) does not change the choice; production installs pin availability_zones (see examples/complete).
  count = var.availability_zones == null ? 1 : 0

  state = "available"

  # Local and Wavelength zones have no GPU instances and no EKS control plane.
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  partition  = data.aws_partition.current.partition
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.region

  tags = merge(
    {
      "mlplane.dev/installation" = var.name
      "managed-by"               = "terraform"
    },
    var.tags,
  )

  # --- Network --------------------------------------------------------------------------------

  azs = var.availability_zones != null ? var.availability_zones : slice(
    sort(data.aws_availability_zones.available[0].names), 0, min(3, length(data.aws_availability_zones.available[0].names))
  )

  # Private subnets: the first sixteenths of the VPC, one per zone (/20 in a /16: 4096
  # addresses, room for pods, since the VPC CNI gives every pod a VPC address). Public subnets:
  # small ones in the last sixteenth, for load balancers and NAT gateways only.
  private_subnet_cidrs = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnet_cidrs  = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 240 + i)]

  vpc_id             = var.create_vpc ? module.vpc[0].vpc_id : var.vpc_id
  private_subnet_ids = var.create_vpc ? module.vpc[0].private_subnets : var.private_subnet_ids
  vpc_cidr_blocks    = var.create_vpc ? [var.vpc_cidr] : var.vpc_cidr_blocks

  # --- Node groups ----------------------------------------------------------------------------
  #
  # Labels mlplane places pods by:
  #   mlplane.dev/pool         system | gpu-on-demand | gpu-spot
  #   mlplane.dev/accelerator  GPU model of a GPU pool, e.g. nvidia-a10g
  #   nvidia.com/gpu.present   "true" on GPU pools: NVIDIA's device plugin schedules on it
  # EKS itself labels every node eks.amazonaws.com/capacityType = ON_DEMAND | SPOT, which is the
  # operator's capacity convention "eks". GPU pools are tainted nvidia.com/gpu=true:NoSchedule so
  # that only pods tolerating it (GPU workers) land there; the spot pool is also tainted
  # mlplane.dev/spot=true:NoSchedule, which the operator tolerates only for workers that may run
  # on spot, so nothing that cannot survive a preemption lands there by accident.
  system_selector = { "mlplane.dev/pool" = "system" }

  node_groups = {
    system = {
      create         = true
      ami_type       = "AL2023_x86_64_STANDARD"
      capacity_type  = "ON_DEMAND"
      instance_types = var.system_node_group.instance_types
      min_size       = var.system_node_group.min_size
      max_size       = var.system_node_group.max_size
      desired_size   = var.system_node_group.desired_size
      disk_size_gib  = var.system_node_group.disk_size_gib
      labels = {
        "mlplane.dev/pool" = "system"
      }
      taints        = {}
      update_config = { max_unavailable_percentage = 33 }
    }

    gpu-on-demand = {
      create         = var.gpu_on_demand_node_group.enabled
      ami_type       = "AL2023_x86_64_NVIDIA"
      capacity_type  = "ON_DEMAND"
      instance_types = var.gpu_on_demand_node_group.instance_types
      min_size       = var.gpu_on_demand_node_group.min_size
      max_size       = var.gpu_on_demand_node_group.max_size
      desired_size   = var.gpu_on_demand_node_group.desired_size
      disk_size_gib  = var.gpu_on_demand_node_group.disk_size_gib
      labels = {
        "mlplane.dev/pool"        = "gpu-on-demand"
        "mlplane.dev/accelerator" = var.gpu_on_demand_node_group.accelerator
        "nvidia.com/gpu.present"  = "true"
      }
      taints = {
        gpu = { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }
      }
      update_config = { max_unavailable = 1 }
    }

    gpu-spot = {
      create         = var.gpu_spot_node_group.enabled
      ami_type       = "AL2023_x86_64_NVIDIA"
      capacity_type  = "SPOT"
      instance_types = var.gpu_spot_node_group.instance_types
      min_size       = var.gpu_spot_node_group.min_size
      max_size       = var.gpu_spot_node_group.max_size
      desired_size   = var.gpu_spot_node_group.desired_size
      disk_size_gib  = var.gpu_spot_node_group.disk_size_gib
      labels = {
        "mlplane.dev/pool"        = "gpu-spot"
        "mlplane.dev/accelerator" = var.gpu_spot_node_group.accelerator
        "nvidia.com/gpu.present"  = "true"
      }
      taints = {
        gpu  = { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }
        spot = { key = "mlplane.dev/spot", value = "true", effect = "NO_SCHEDULE" }
      }
      update_config = { max_unavailable = 1 }
    }
  }

  # How EKS spells taint effects, and how Kubernetes (and the cluster autoscaler) spell them.
  taint_effects = {
    NO_SCHEDULE        = "NoSchedule"
    NO_EXECUTE         = "NoExecute"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
  }

  # Scale from zero: with no node in a group, the cluster autoscaler cannot see the labels and
  # taints its nodes would have, so it cannot tell that a pending pod asking for
  # mlplane.dev/accelerator=nvidia-a10g on SPOT capacity fits the gpu-spot group. EKS does not
  # copy node group labels to the Auto Scaling group; these node-template tags do.
  autoscaler_node_templates = {
    for group, ng in local.node_groups : group => concat(
      [for k, v in ng.labels : { key = "label/${k}", value = v }],
      [{ key = "label/eks.amazonaws.com/capacityType", value = ng.capacity_type }],
      [for t in values(ng.taints) : { key = "taint/${t.key}", value = "${t.value}:${local.taint_effects[t.effect]}" }],
    ) if ng.create
  }
  autoscaler_template_tags = var.install_cluster_autoscaler ? merge([
    for group, tags in local.autoscaler_node_templates : {
      for tag in tags : "${group}|${tag.key}" => {
        group = group
        key   = "k8s.io/cluster-autoscaler/node-template/${tag.key}"
        value = tag.value
      }
    }
  ]...) : {}

  # Fixed key layout, the operator's convention: it is given s3://<bucket> as its artifacts URI
  # and puts a TrainingJob's default checkpoints under <that>/checkpoints/<namespace>/<name>.
  checkpoints_prefix = "checkpoints"
  artifacts_prefix   = "artifacts"

  bucket_name              = coalesce(var.bucket_name, "${var.name}-mlplane-${local.account_id}-${local.region}")
  mlplane_chart            = coalesce(var.mlplane_chart_path, "${path.module}/../helm/mlplane")
  autoscaler_sa            = { namespace = "kube-system", name = "cluster-autoscaler" }
  cluster_admin_policy_arn = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
}

# --- VPC ------------------------------------------------------------------------------------------

module "vpc" {
  #checkov:skip=CKV_TF_1:A registry module pinned to its major version (~> 6.0) on purpose, so that fixes in minor releases arrive; a commit-hash pin applies to git sources and would freeze them.
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 6.0"
  count   = var.create_vpc ? 1 : 0

  name = var.name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = local.private_subnet_cidrs
  public_subnets  = local.public_subnet_cidrs

  enable_nat_gateway     = true
  single_nat_gateway     = var.single_nat_gateway
  one_nat_gateway_per_az = !var.single_nat_gateway
  enable_dns_hostnames   = true
  enable_dns_support     = true

  # Where the AWS load balancer controller (or in-tree service controller) puts load balancers.
  public_subnet_tags  = { "kubernetes.io/role/elb" = "1" }
  private_subnet_tags = { "kubernetes.io/role/internal-elb" = "1" }

  enable_flow_log                                 = var.enable_vpc_flow_logs
  create_flow_log_cloudwatch_log_group            = var.enable_vpc_flow_logs
  create_flow_log_cloudwatch_iam_role             = var.enable_vpc_flow_logs
  flow_log_max_aggregation_interval               = 60
  flow_log_cloudwatch_log_group_retention_in_days = 90

  tags = local.tags
}

# --- EKS ------------------------------------------------------------------------------------------

module "eks" {
  #checkov:skip=CKV_TF_1:A registry module pinned to its major version (~> 21.0) on purpose, so that fixes in minor releases arrive; a commit-hash pin applies to git sources and would freeze them.
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 21.0"

  name               = var.name
  kubernetes_version = var.kubernetes_version

  vpc_id     = local.vpc_id
  subnet_ids = local.private_subnet_ids

  endpoint_private_access      = true
  endpoint_public_access       = var.endpoint_public_access
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs

  # IRSA: an IAM OIDC provider for the cluster's service-account tokens.
  enable_irsa = true

  authentication_mode = "API"
  # The identity running Terraform must reach the API to install the charts.
  enable_cluster_creator_admin_permissions = true
  access_entries = {
    for arn in var.cluster_admin_principal_arns : arn => {
      principal_arn = arn
      policy_associations = {
        admin = {
          policy_arn   = local.cluster_admin_policy_arn
          access_scope = { type = "cluster" }
        }
      }
    }
  }

  addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni = {
      before_compute = true
      # Enforce NetworkPolicies (the mlplane chart ships one for the operator).
      configuration_values = jsonencode({ enableNetworkPolicy = "true" })
    }
  }

  eks_managed_node_groups = {
    for group, ng in local.node_groups : group => {
      create         = ng.create
      ami_type       = ng.ami_type
      capacity_type  = ng.capacity_type
      instance_types = ng.instance_types
      min_size       = ng.min_size
      max_size       = ng.max_size
      desired_size   = ng.desired_size
      labels         = ng.labels
      taints         = ng.taints
      update_config  = ng.update_config

      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = ng.disk_size_gib
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }

      # IMDSv2 only, one hop: pods cannot borrow the node's role; they use IRSA.
      metadata_options = {
        http_endpoint               = "enabled"
        http_tokens                 = "required"
        http_put_response_hop_limit = 1
      }

      iam_role_permissions_boundary = var.iam_permissions_boundary_arn
    }
  }

  iam_role_permissions_boundary      = var.iam_permissions_boundary_arn
  node_iam_role_permissions_boundary = var.iam_permissions_boundary_arn

  tags = local.tags
}

resource "aws_autoscaling_group_tag" "node_template" {
  for_each = local.autoscaler_template_tags

  autoscaling_group_name = one(module.eks.eks_managed_node_groups[each.value.group].node_group_autoscaling_group_names)

  tag {
    key                 = each.value.key
    value               = each.value.value
    propagate_at_launch = false
  }
}

# --- Bucket -----------------------------------------------------------------------------------

module "artifact_bucket" {
  source = "./modules/artifact-bucket"

  bucket_name                        = local.bucket_name
  checkpoints_prefix                 = local.checkpoints_prefix
  artifacts_prefix                   = local.artifacts_prefix
  force_destroy                      = var.bucket_force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  access_log_bucket                  = var.access_log_bucket
  tags                               = local.tags
}

# --- Charts and workload identities -----------------------------------------------------------

module "platform" {
  source = "./modules/platform"

  cluster_name         = module.eks.cluster_name
  region               = local.region
  system_node_selector = local.system_selector
  # The API server as the operator's pod may see it: the "kubernetes" Service's ClusterIP
  # (first address of the service CIDR) and the control plane's endpoints inside the VPC.
  api_server_cidrs = length(local.vpc_cidr_blocks) == 0 ? ["0.0.0.0/0"] : concat(
    ["${cidrhost(module.eks.cluster_service_cidr, 1)}/32"], local.vpc_cidr_blocks
  )

  kuberay_chart_version              = var.kuberay_chart_version
  install_nvidia_device_plugin       = var.install_nvidia_device_plugin
  nvidia_device_plugin_chart_version = var.nvidia_device_plugin_chart_version

  install_cluster_autoscaler       = var.install_cluster_autoscaler
  cluster_autoscaler_chart_version = var.cluster_autoscaler_chart_version
  cluster_autoscaler_image_tag     = var.cluster_autoscaler_image_tag
  cluster_autoscaler_service_account = var.install_cluster_autoscaler ? {
    namespace = local.autoscaler_sa.namespace
    name      = local.autoscaler_sa.name
    role_arn  = one(module.irsa_cluster_autoscaler[*].role_arn)
  } : null

  workload_namespaces        = var.workload_namespaces
  create_workload_namespaces = var.create_workload_namespaces
  service_accounts = {
    operator = { name = var.operator_service_account, role_arn = module.irsa_operator.role_arn }
    # The same service account name in every team namespace, each annotated with its own role.
    training = { name = var.training_service_account, role_arns = { for ns, role in module.irsa_training : ns => role.role_arn } }
    serving  = { name = var.serving_service_account, role_arns = { for ns, role in module.irsa_serving : ns => role.role_arn } }
  }
  bucket_name = module.artifact_bucket.bucket_name

  install_mlplane           = var.install_mlplane
  mlplane_chart_path        = local.mlplane_chart
  mlplane_chart_repository  = var.mlplane_chart_repository
  mlplane_chart_version     = var.mlplane_chart_version
  mlplane_namespace         = var.mlplane_namespace
  mlflow_tracking_uri       = var.mlflow_tracking_uri
  capacity_label_convention = "eks"
  mlplane_extra_values      = var.mlplane_extra_values

  # Charts need nodes to run on, and the autoscaler's role must exist before its pods start.
  depends_on = [module.eks, aws_autoscaling_group_tag.node_template]
}
