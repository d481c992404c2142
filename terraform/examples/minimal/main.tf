# The smallest real installation: a new VPC (one NAT gateway), the EKS cluster with its system,
# GPU on-demand and GPU spot node groups at their defaults (A10G; GPU groups idle at zero nodes),
# the bucket, the IRSA roles, KubeRay and mlplane from this repository's chart.

module "mlplane" {
  source = "../.."

  name = var.name

  single_nat_gateway = true
  # Terraform runs outside the VPC here (it installs the charts): open the API to these CIDRs
  # only. The module's default is a private endpoint.
  endpoint_public_access       = true
  endpoint_public_access_cidrs = var.api_allowed_cidrs

  mlflow_tracking_uri = var.mlflow_tracking_uri

  tags = {
    environment = "sandbox"
  }
}
