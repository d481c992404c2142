output "mlplane_values" {
  description = "Values for the mlplane chart, for the GitOps tool that installs it."
  value       = module.mlplane.mlplane_values
}

output "service_accounts" {
  description = "Service accounts and the IAM roles they assume."
  value       = module.mlplane.service_accounts
}
