variable "name" {
  description = "Name of the IAM role (and of its policy). At most 64 characters."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.name))
    error_message = "name must be 1-64 characters from A-Z, a-z, 0-9 and +=,.@_-."
  }
}

variable "description" {
  description = "Human description of the role, shown in the IAM console."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC identity provider (the eks module's oidc_provider_arn output)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/.+$", var.oidc_provider_arn))
    error_message = "oidc_provider_arn must be an IAM OIDC provider ARN."
  }
}

variable "oidc_issuer" {
  description = "The OIDC issuer without its scheme, e.g. oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE (the eks module's oidc_provider output); it prefixes the :sub and :aud condition keys."
  type        = string

  validation {
    condition     = !startswith(var.oidc_issuer, "https://")
    error_message = "oidc_issuer must not include the https:// scheme."
  }
}

variable "service_accounts" {
  description = "Kubernetes service accounts (namespace and name) allowed to assume the role. No wildcards: each pair is matched exactly."
  type = list(object({
    namespace = string
    name      = string
  }))

  validation {
    condition     = length(var.service_accounts) > 0
    error_message = "Give at least one service account."
  }

  validation {
    condition = alltrue([
      for sa in var.service_accounts :
      can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", sa.namespace)) && can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", sa.name))
    ])
    error_message = "Namespaces must be DNS labels and service account names DNS subdomains; wildcards are not allowed."
  }
}

variable "policy_json" {
  description = "The role's permissions as an IAM policy document in JSON (render it with data.aws_iam_policy_document)."
  type        = string
}

variable "permissions_boundary_arn" {
  description = "ARN of a managed policy set as the role's permissions boundary, where the organisation requires one. Null sets none."
  type        = string
  default     = null
}

variable "max_session_duration" {
  description = "Longest session, in seconds, that the role's credentials last; the AWS SDKs refresh web-identity credentials before they expire."
  type        = number
  default     = 3600

  validation {
    condition     = var.max_session_duration >= 3600 && var.max_session_duration <= 43200
    error_message = "max_session_duration must be between 3600 and 43200 seconds."
  }
}

variable "tags" {
  description = "Tags added to the role and its policy."
  type        = map(string)
  default     = {}
}
