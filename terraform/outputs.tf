# --- Cluster ----------------------------------------------------------------------------------

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Endpoint of the Kubernetes API server (for the helm and kubernetes providers)."
  value       = module.eks.cluster_endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64-encoded CA certificate of the cluster's API server."
  value       = module.eks.cluster_certificate_authority_data
}

output "cluster_oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider, for further IRSA roles."
  value       = module.eks.oidc_provider_arn
}

output "region" {
  description = "AWS region of the installation."
  value       = local.region
}

output "kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${local.region} --name ${module.eks.cluster_name}"
}

output "vpc_id" {
  description = "ID of the VPC the cluster runs in (created or given)."
  value       = local.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the nodes."
  value       = local.private_subnet_ids
}

output "node_pools" {
  description = "The node groups mlplane places pods on: capacity type, labels (EKS adds eks.amazonaws.com/capacityType) and taints, by group name. Disabled groups are left out."
  value = {
    for group, ng in local.node_groups : group => {
      capacity_type  = ng.capacity_type
      ami_type       = ng.ami_type
      instance_types = ng.instance_types
      labels         = ng.labels
      taints         = [for t in values(ng.taints) : "${t.key}=${t.value}:${local.taint_effects[t.effect]}"]
    } if ng.create
  }
}

# --- Storage ----------------------------------------------------------------------------------

output "bucket_name" {
  description = "Name of the checkpoints and artifacts bucket."
  value       = module.artifact_bucket.bucket_name
}

output "bucket_kms_key_arn" {
  description = "ARN of the KMS key encrypting the bucket."
  value       = module.artifact_bucket.kms_key_arn
}

output "checkpoints_uri" {
  description = "Base URI for TrainingJobs' spec.checkpoint.uri (append a per-job path)."
  value       = module.artifact_bucket.checkpoints_uri
}

output "artifacts_uri" {
  description = "Base URI of model artifacts."
  value       = module.artifact_bucket.artifacts_uri
}

# --- Identities -------------------------------------------------------------------------------

output "operator_role_arn" {
  description = "IAM role of the mlplane operator's service account."
  value       = module.irsa_operator.role_arn
}

output "training_role_arns" {
  description = "IAM role of the training service account, by workload namespace (each limited to that namespace's prefixes)."
  value       = { for ns, role in module.irsa_training : ns => role.role_arn }
}

output "serving_role_arns" {
  description = "IAM role of the serving service account, by workload namespace (each reads only that namespace's artifacts)."
  value       = { for ns, role in module.irsa_serving : ns => role.role_arn }
}

output "cluster_autoscaler_role_arn" {
  description = "IAM role of the cluster autoscaler, or null when it is not installed."
  value       = one(module.irsa_cluster_autoscaler[*].role_arn)
}

output "service_accounts" {
  description = "Every service account bound to an IAM role here, as namespace/name => role ARN."
  value = merge(
    { "${var.mlplane_namespace}/${var.operator_service_account}" = module.irsa_operator.role_arn },
    { for ns in var.workload_namespaces : "${ns}/${var.training_service_account}" => module.irsa_training[ns].role_arn },
    { for ns in var.workload_namespaces : "${ns}/${var.serving_service_account}" => module.irsa_serving[ns].role_arn },
  )
}

# --- Charts -----------------------------------------------------------------------------------

output "mlplane_values" {
  description = "Values computed for the mlplane chart, e.g. to install it with Argo CD or Flux when install_mlplane is false."
  value       = module.platform.mlplane_values
}

output "mlplane_namespace" {
  description = "Namespace of the mlplane operator."
  value       = var.mlplane_namespace
}

output "workload_namespaces" {
  description = "Namespaces prepared for TrainingJobs and ModelDeployments."
  value       = var.workload_namespaces
}
