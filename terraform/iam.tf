# IAM roles for mlplane's service accounts, through IRSA (IAM roles for service accounts).
#
# Why IRSA rather than EKS Pod Identity: IRSA's binding is an annotation on the service account
# plus a trust policy pinned to the exact namespace/name, which works the same on any cluster
# with an OIDC issuer (self-managed or another EKS made elsewhere) and needs no agent DaemonSet;
# and every S3 client mlplane's pods use (boto3 for MLflow, pyarrow's AWS SDK for Ray Train
# checkpoints) has supported web-identity credentials for years. Pod Identity would remove the
# per-cluster OIDC provider and trust-policy edits; switching later means replacing the trust
# policy and the annotations, not the permissions below.
#
# Least privilege, per service account, all scoped to the one bucket and its KMS key. Tenants
# apart: every team (workload) namespace gets its own training and serving role, trusted only by
# that namespace's service account and scoped to that namespace's prefixes:
#   training <ns>  read/write  checkpoints/<ns>/* and artifacts/<ns>/*; read training_data_buckets
#   serving  <ns>  read        artifacts/<ns>/*
#   operator       read        checkpoints/* (finds the newest checkpoint an attempt resumes from,
#                              for every namespace: the operator is the platform, not a tenant)
#                  write       checkpoints/*/_mlplane_notice.json only: the reclaim notice it
#                              hands the running attempt (docs/spot.md), never a checkpoint
# So a training cluster in one namespace can neither read, overwrite nor delete another team's
# checkpoints or models. No policy grants a wildcard action or s3 actions on "*".

locals {
  bucket_arn      = module.artifact_bucket.bucket_arn
  kms_key_arn     = module.artifact_bucket.kms_key_arn
  checkpoints_arn = "${local.bucket_arn}/${local.checkpoints_prefix}/*"
  # The reclaim notice the operator writes in a job's checkpoint folder (monitoring/notice.py).
  notice_object = "_mlplane_notice.json"
  # ListBucket is a bucket action; its s3:prefix condition keeps listings inside the prefixes.
  checkpoints_listing = [local.checkpoints_prefix, "${local.checkpoints_prefix}/*"]

  # Each team namespace's own prefixes: the operator's default checkpoint layout is already
  # checkpoints/<namespace>/<name>/<uid>; model artifacts go to artifacts/<namespace>/ (the
  # MLflow experiments of that namespace's TrainingJobs must have their artifact location there).
  team_prefixes = {
    for ns in var.workload_namespaces : ns => {
      checkpoints = "${local.checkpoints_prefix}/${ns}"
      artifacts   = "${local.artifacts_prefix}/${ns}"
    }
  }
  s3_via_service = "s3.${local.region}.amazonaws.com"

  oidc = {
    provider_arn = module.eks.oidc_provider_arn
    issuer       = module.eks.oidc_provider
  }
  # One subject per role: the service account of that name in that namespace only.
  workload_subjects = {
    training = { for ns in var.workload_namespaces : ns => [{ namespace = ns, name = var.training_service_account }] }
    serving  = { for ns in var.workload_namespaces : ns => [{ namespace = ns, name = var.serving_service_account }] }
  }
}

# --- Training, one per team namespace: read/write its checkpoints and artifacts --------------

data "aws_iam_policy_document" "training" {
  for_each = local.team_prefixes

  # ...IfExists: Ray Train writes checkpoints through pyarrow's S3 filesystem, which checks the
  # bucket with HeadBucket (authorised as s3:ListBucket, without a prefix) before creating a
  # "directory". Listings that do name a prefix stay inside the namespace's two prefixes.
  statement {
    sid       = "ListOwnCheckpointsAndArtifacts"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    condition {
      test     = "StringLikeIfExists"
      variable = "s3:prefix"
      values = [
        each.value.checkpoints, "${each.value.checkpoints}/*",
        each.value.artifacts, "${each.value.artifacts}/*",
      ]
    }
  }

  statement {
    sid       = "LocateBucket"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [local.bucket_arn]
  }

  statement {
    sid    = "ReadWriteOwnCheckpointsAndArtifacts"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      # Ray Train keeps the newest N checkpoints and deletes older ones.
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${local.bucket_arn}/${each.value.checkpoints}/*",
      "${local.bucket_arn}/${each.value.artifacts}/*",
    ]
  }

  # Training data elsewhere: read-only, each bucket limited to its prefix.
  dynamic "statement" {
    for_each = var.training_data_buckets
    content {
      sid       = "ListTrainingData${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.value.bucket}"]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.training_data_buckets
    content {
      sid       = "ReadTrainingData${statement.key}"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = ["arn:${local.partition}:s3:::${statement.value.bucket}/${statement.value.prefix}*"]
    }
  }

  statement {
    sid       = "UseBucketKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_via_service]
    }
  }
}

# --- Serving, one per team namespace: read its artifacts --------------------------------------

data "aws_iam_policy_document" "serving" {
  for_each = local.team_prefixes

  statement {
    sid       = "ListOwnArtifacts"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [each.value.artifacts, "${each.value.artifacts}/*"]
    }
  }

  statement {
    sid       = "LocateBucket"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [local.bucket_arn]
  }

  statement {
    sid       = "ReadOwnArtifacts"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/${each.value.artifacts}/*"]
  }

  statement {
    sid       = "DecryptWithBucketKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [local.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_via_service]
    }
  }
}

# --- Operator: read checkpoints, write reclaim notices ---------------------------------------------------------------

data "aws_iam_policy_document" "operator" {
  statement {
    sid       = "ListCheckpoints"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.checkpoints_listing
    }
  }

  statement {
    sid       = "LocateBucket"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [local.bucket_arn]
  }

  statement {
    sid       = "ReadCheckpoints"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.checkpoints_arn]
  }

  statement {
    sid       = "WriteReclaimNotices"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/${local.checkpoints_prefix}/*/${local.notice_object}"]
  }

  statement {
    sid       = "DecryptWithBucketKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_via_service]
    }
  }
}

# --- Cluster autoscaler -----------------------------------------------------------------------

data "aws_iam_policy_document" "cluster_autoscaler" {
  # Discovery calls support no resource-level permissions: AWS only accepts "*" for them.
  statement {
    sid    = "DiscoverNodeGroups"
    effect = "Allow"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  # Scaling only this cluster's managed node groups: EKS names their Auto Scaling groups eks-*
  # and tags them k8s.io/cluster-autoscaler/<cluster> = owned.
  statement {
    sid    = "ScaleOwnNodeGroups"
    effect = "Allow"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/eks-*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${module.eks.cluster_name}"
      values   = ["owned"]
    }
  }

  # Labels and taints of empty managed node groups, for scaling them from zero.
  statement {
    sid       = "ReadOwnNodeGroups"
    effect    = "Allow"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${local.region}:${local.account_id}:nodegroup/${module.eks.cluster_name}/*/*"]
  }
}

# --- Roles ------------------------------------------------------------------------------------

module "irsa_operator" {
  source = "./modules/irsa-role"

  name                     = "${var.name}-mlplane-operator"
  description              = "mlplane operator: reads checkpoints in s3://${local.bucket_name}/${local.checkpoints_prefix}"
  oidc_provider_arn        = local.oidc.provider_arn
  oidc_issuer              = local.oidc.issuer
  service_accounts         = [{ namespace = var.mlplane_namespace, name = var.operator_service_account }]
  policy_json              = data.aws_iam_policy_document.operator.json
  permissions_boundary_arn = var.iam_permissions_boundary_arn
  tags                     = local.tags
}

# One role per team namespace (IAM role names: at most 64 characters; variables.tf checks
# "<name>-<namespace>-training" fits).
module "irsa_training" {
  source   = "./modules/irsa-role"
  for_each = local.team_prefixes

  name                     = "${var.name}-${each.key}-training"
  description              = "mlplane training pods of namespace ${each.key}: read/write s3://${local.bucket_name}/${each.value.checkpoints} and /${each.value.artifacts}"
  oidc_provider_arn        = local.oidc.provider_arn
  oidc_issuer              = local.oidc.issuer
  service_accounts         = local.workload_subjects.training[each.key]
  policy_json              = data.aws_iam_policy_document.training[each.key].json
  permissions_boundary_arn = var.iam_permissions_boundary_arn
  tags                     = merge(local.tags, { "mlplane.dev/namespace" = each.key })
}

module "irsa_serving" {
  source   = "./modules/irsa-role"
  for_each = local.team_prefixes

  name                     = "${var.name}-${each.key}-serving"
  description              = "mlplane serving pods of namespace ${each.key}: read s3://${local.bucket_name}/${each.value.artifacts}"
  oidc_provider_arn        = local.oidc.provider_arn
  oidc_issuer              = local.oidc.issuer
  service_accounts         = local.workload_subjects.serving[each.key]
  policy_json              = data.aws_iam_policy_document.serving[each.key].json
  permissions_boundary_arn = var.iam_permissions_boundary_arn
  tags                     = merge(local.tags, { "mlplane.dev/namespace" = each.key })
}

module "irsa_cluster_autoscaler" {
  source = "./modules/irsa-role"
  count  = var.install_cluster_autoscaler ? 1 : 0

  name                     = "${var.name}-cluster-autoscaler"
  description              = "Cluster autoscaler of EKS cluster ${var.name}: scales its managed node groups"
  oidc_provider_arn        = local.oidc.provider_arn
  oidc_issuer              = local.oidc.issuer
  service_accounts         = [local.autoscaler_sa]
  policy_json              = data.aws_iam_policy_document.cluster_autoscaler.json
  permissions_boundary_arn = var.iam_permissions_boundary_arn
  tags                     = local.tags
}
