output "role_arn" {
  description = "ARN of the role: the value of the service account annotation eks.amazonaws.com/role-arn."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the role."
  value       = aws_iam_role.this.name
}

output "policy_arn" {
  description = "ARN of the managed policy attached to the role."
  value       = aws_iam_policy.this.arn
}

output "service_account_subjects" {
  description = "The exact OIDC subjects (system:serviceaccount:<namespace>:<name>) the trust policy admits."
  value       = [for sa in var.service_accounts : "system:serviceaccount:${sa.namespace}:${sa.name}"]
}
