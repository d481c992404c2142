# Into an existing VPC (a shared network account's VPC, say), with a private-only API endpoint:
# run Terraform from inside the VPC (a CI runner or bastion there). mlplane's own chart is left
# to GitOps: the mlplane_values output holds the values to give Argo CD or Flux.

module "mlplane" {
  source = "../.."

  name = var.name

  create_vpc         = false
  vpc_id             = var.vpc_id
  private_subnet_ids = var.private_subnet_ids
  vpc_cidr_blocks    = var.vpc_cidr_blocks

  endpoint_public_access = false

  # L4 GPUs (g6) instead of the default A10G (g5).
  gpu_on_demand_node_group = {
    instance_types = ["g6.xlarge", "g6.2xlarge"]
    accelerator    = "nvidia-l4"
    max_size       = 2
  }
  gpu_spot_node_group = {
    instance_types = ["g6.xlarge", "g6.2xlarge", "g6.4xlarge"]
    accelerator    = "nvidia-l4"
    max_size       = 6
  }

  install_mlplane     = false
  workload_namespaces = ["ml"]
}
