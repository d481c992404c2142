# An IAM role for Kubernetes service accounts (IRSA): pods running as one of the listed service
# accounts exchange their projected service-account token for this role's short-lived
# credentials through sts:AssumeRoleWithWebIdentity. Nothing here creates a static key.
#
# The trust policy pins both the audience and the exact subject
# (system:serviceaccount:<namespace>:<name>), so another service account in the same cluster,
# or the same name in another namespace, cannot assume the role.

data "aws_iam_policy_document" "trust" {
  statement {
    sid     = "ServiceAccountsAssumeByWebIdentity"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = [for sa in var.service_accounts : "system:serviceaccount:${sa.namespace}:${sa.name}"]
    }
  }
}

resource "aws_iam_role" "this" {
  name                 = var.name
  description          = var.description
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  permissions_boundary = var.permissions_boundary_arn
  max_session_duration = var.max_session_duration
  tags                 = var.tags
}

resource "aws_iam_policy" "this" {
  name        = var.name
  description = "Permissions of ${var.name}: ${var.description}"
  policy      = var.policy_json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "this" {
  role       = aws_iam_role.this.name
  policy_arn = aws_iam_policy.this.arn
}
