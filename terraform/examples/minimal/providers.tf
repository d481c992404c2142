# Credentials come from the environment (AWS_PROFILE, SSO, an instance or CI role); nothing
# static is written here. The helm and kubernetes providers authenticate to the new cluster with
# short-lived tokens from `aws eks get-token`, so the AWS CLI must be on PATH.

provider "aws" {
  region = var.region
}

provider "helm" {
  kubernetes = {
    host                   = module.mlplane.cluster_endpoint
    cluster_ca_certificate = base64decode(module.mlplane.cluster_certificate_authority_data)
    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.mlplane.cluster_name, "--region", var.region]
    }
  }
}

provider "kubernetes" {
  host                   = module.mlplane.cluster_endpoint
  cluster_ca_certificate = base64decode(module.mlplane.cluster_certificate_authority_data)

  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.mlplane.cluster_name, "--region", var.region]
  }
}
