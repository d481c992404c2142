output "kubeconfig_command" {
  description = "Run this to point kubectl at the new cluster."
  value       = module.mlplane.kubeconfig_command
}

output "checkpoints_uri" {
  description = "Base URI for TrainingJobs' spec.checkpoint.uri."
  value       = module.mlplane.checkpoints_uri
}

output "node_pools" {
  description = "Node groups with their capacity types, labels and taints."
  value       = module.mlplane.node_pools
}
