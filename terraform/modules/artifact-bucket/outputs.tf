output "bucket_name" {
  description = "Name of the checkpoints and artifacts bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the checkpoints and artifacts bucket (object ARNs are this plus /key)."
  value       = aws_s3_bucket.this.arn
}

output "bucket_region" {
  description = "Region the bucket lives in (S3 clients outside that region need it)."
  value       = aws_s3_bucket.this.region
}

output "kms_key_arn" {
  description = "ARN of the customer-managed KMS key that encrypts the bucket; readers need kms:Decrypt on it, writers kms:GenerateDataKey too."
  value       = aws_kms_key.this.arn
}

output "checkpoints_uri" {
  description = "s3:// URI of the checkpoints prefix, the value for a TrainingJob's spec.checkpoint.uri base."
  value       = "s3://${aws_s3_bucket.this.id}/${var.checkpoints_prefix}"
}

output "artifacts_uri" {
  description = "s3:// URI of the artifacts prefix (models, reference profiles)."
  value       = "s3://${aws_s3_bucket.this.id}/${var.artifacts_prefix}"
}
