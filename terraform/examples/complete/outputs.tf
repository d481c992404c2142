output "kubeconfig_command" {
  description = "Run this to point kubectl at the new cluster."
  value       = module.mlplane.kubeconfig_command
}

output "bucket_name" {
  description = "The checkpoints and artifacts bucket."
  value       = module.mlplane.bucket_name
}

output "checkpoints_uri" {
  description = "Base URI for TrainingJobs' spec.checkpoint.uri."
  value       = module.mlplane.checkpoints_uri
}

output "service_accounts" {
  description = "Service accounts and the IAM roles they assume."
  value       = module.mlplane.service_accounts
}

output "node_pools" {
  description = "Node groups with their capacity types, labels and taints."
  value       = module.mlplane.node_pools
}
