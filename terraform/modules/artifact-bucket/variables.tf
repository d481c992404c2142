variable "bucket_name" {
  description = "Name of the S3 bucket that holds mlplane checkpoints and artifacts. Globally unique, 3-63 lowercase letters, digits and hyphens. No dots: they break TLS for virtual-hosted-style requests and are not allowed in the KMS alias named after the bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("^xn--|-s3alias$|--ol-s3$", var.bucket_name))
    error_message = "bucket_name must be 3-63 lowercase letters, digits or hyphens, starting and ending with a letter or digit (no dots)."
  }
}

variable "checkpoints_prefix" {
  description = "Key prefix (no slashes) under which training writes checkpoints. Only used for the outputs' URIs; access is scoped by IAM in the caller."
  type        = string
  default     = "checkpoints"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", var.checkpoints_prefix))
    error_message = "checkpoints_prefix must be one path segment of lowercase letters, digits, dots, underscores or hyphens."
  }
}

variable "artifacts_prefix" {
  description = "Key prefix (no slashes) under which models and other artifacts are stored. Only used for the outputs' URIs."
  type        = string
  default     = "artifacts"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", var.artifacts_prefix))
    error_message = "artifacts_prefix must be one path segment of lowercase letters, digits, dots, underscores or hyphens."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects. Keep false outside throwaway environments: checkpoints and models live here."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which a noncurrent (overwritten or deleted) object version is expired. Checkpoints are rewritten often, so old versions add up quickly."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number between 1 and 3650."
  }
}

variable "noncurrent_versions_to_keep" {
  description = "How many noncurrent versions of each object survive expiration regardless of age (0 keeps none beyond the age rule)."
  type        = number
  default     = 3

  validation {
    condition     = var.noncurrent_versions_to_keep >= 0 && var.noncurrent_versions_to_keep <= 100 && floor(var.noncurrent_versions_to_keep) == var.noncurrent_versions_to_keep
    error_message = "noncurrent_versions_to_keep must be a whole number between 0 and 100."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which unfinished multipart uploads (e.g. from a preempted spot worker writing a checkpoint) are aborted and their parts deleted."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && var.abort_incomplete_multipart_upload_days <= 365
    error_message = "abort_incomplete_multipart_upload_days must be between 1 and 365."
  }
}

variable "kms_key_deletion_window_days" {
  description = "Waiting period before the bucket's KMS key is deleted after `terraform destroy` (7-30 days, AWS limits)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_days >= 7 && var.kms_key_deletion_window_days <= 30
    error_message = "kms_key_deletion_window_days must be between 7 and 30."
  }
}

variable "access_log_bucket" {
  description = "Name of an existing bucket that receives S3 server access logs for this bucket (usually an organisation's central log bucket). Null disables access logging."
  type        = string
  default     = null

  validation {
    condition     = var.access_log_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.access_log_bucket))
    error_message = "access_log_bucket must be null or a valid S3 bucket name."
  }
}

variable "access_log_prefix" {
  description = "Key prefix for access log objects in access_log_bucket."
  type        = string
  default     = "s3-access/"
}

variable "tags" {
  description = "Tags added to every resource this module creates."
  type        = map(string)
  default     = {}
}
