# What runs inside the cluster underneath and beside mlplane: KubeRay (the operator mlplane
# drives), NVIDIA's device plugin (GPUs become schedulable), the cluster autoscaler (GPU node
# groups scale from zero to pending Ray workers and back), the workload service accounts bound
# to their IAM roles, and mlplane's own chart.
#
# Nothing here configures a provider: the caller passes configured helm and kubernetes
# providers (see examples/), so this module also works against a cluster made elsewhere.

locals {
  irsa_annotation = "eks.amazonaws.com/role-arn"

  # The port the operator reaches MLflow on, for its NetworkPolicy egress rule: explicit in the
  # URI, else the scheme's default.
  mlflow_uri_parts = try(regex("^(https?)://[^/:]+(?::([0-9]+))?", var.mlflow_tracking_uri), ["https", null])
  mlflow_port      = local.mlflow_uri_parts[1] != null ? tonumber(local.mlflow_uri_parts[1]) : (local.mlflow_uri_parts[0] == "https" ? 443 : 80)

  # Tenants apart: each namespace's account gets that namespace's role, never another's.
  workload_service_accounts = merge([
    for ns in var.workload_namespaces : {
      for kind in ["training", "serving"] : "${ns}/${kind}" => {
        namespace = ns
        kind      = kind
        name      = var.service_accounts[kind].name
        role_arn  = lookup(var.service_accounts[kind].role_arns, ns, null)
      }
    }
  ]...)

  # Values for the mlplane chart (helm/mlplane, whose values.schema.json rejects unknown keys).
  # What the operator needs beyond the chart's own keys (the service accounts Ray pods run as)
  # travels as environment variables through operator.extraEnv.
  mlplane_values = {
    serviceAccount = {
      create      = true
      name        = var.service_accounts.operator.name
      annotations = { for k, v in { (local.irsa_annotation) = var.service_accounts.operator.role_arn } : k => v if v != null }
    }
    nodeSelector = var.system_node_selector
    operator = {
      mlflowTrackingUri = var.mlflow_tracking_uri
      artifactsUri      = "s3://${var.bucket_name}"
      capacityLabels    = var.capacity_label_convention
      extraEnv = [
        { name = "MLPLANE_TRAINING_SERVICE_ACCOUNT", value = var.service_accounts.training.name },
        { name = "MLPLANE_SERVING_SERVICE_ACCOUNT", value = var.service_accounts.serving.name },
        { name = "AWS_REGION", value = var.region },
      ]
    }
    networkPolicy = {
      egress = {
        apiServer = {
          to = [for cidr in var.api_server_cidrs : { ipBlock = { cidr = cidr } }]
        }
        mlflow = {
          ports = [{ port = local.mlflow_port, protocol = "TCP" }]
        }
      }
    }
  }
}

# --- KubeRay ----------------------------------------------------------------------------------

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_chart_version
  namespace        = var.kuberay_namespace
  create_namespace = true
  atomic           = true
  cleanup_on_fail  = true
  wait             = true
  timeout          = var.helm_timeout_seconds
  max_history      = 10

  values = [yamlencode({
    nodeSelector = var.system_node_selector
  })]
}

# --- GPUs ---------------------------------------------------------------------------------------

# The chart's default affinity selects nodes labelled nvidia.com/gpu.present=true, which the GPU
# node groups carry, so no node feature discovery is needed. It must tolerate both GPU taints.
resource "helm_release" "nvidia_device_plugin" {
  count = var.install_nvidia_device_plugin ? 1 : 0

  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  atomic           = true
  cleanup_on_fail  = true
  # A DaemonSet on node groups that may have zero nodes: waiting would wait for nothing.
  wait        = false
  timeout     = var.helm_timeout_seconds
  max_history = 10

  values = [yamlencode({
    tolerations = [
      { key = var.gpu_taint.key, operator = "Exists", effect = var.gpu_taint.effect },
      { key = var.spot_taint.key, operator = "Exists", effect = var.spot_taint.effect },
    ]
  })]
}

# --- Cluster autoscaler -----------------------------------------------------------------------

resource "helm_release" "cluster_autoscaler" {
  count = var.install_cluster_autoscaler ? 1 : 0

  name             = "cluster-autoscaler"
  repository       = "https://kubernetes.github.io/autoscaler"
  chart            = "cluster-autoscaler"
  version          = var.cluster_autoscaler_chart_version
  namespace        = var.cluster_autoscaler_service_account.namespace
  create_namespace = true
  atomic           = true
  cleanup_on_fail  = true
  wait             = true
  timeout          = var.helm_timeout_seconds
  max_history      = 10

  values = [yamlencode(merge(
    {
      cloudProvider = "aws"
      awsRegion     = var.region
      autoDiscovery = { clusterName = var.cluster_name }
      rbac = {
        serviceAccount = {
          create      = true
          name        = var.cluster_autoscaler_service_account.name
          annotations = { (local.irsa_annotation) = var.cluster_autoscaler_service_account.role_arn }
        }
      }
      nodeSelector = var.system_node_selector
      extraArgs = {
        # Spread replacement workers across equivalent groups and zones.
        "balance-similar-node-groups" = true
        expander                      = "least-waste"
        # Give up on a spot group that cannot get capacity so mlplane's fallback to on-demand
        # (SpotWithFallback) is not stuck behind it.
        "max-node-provision-time" = "10m"
        # Ray pods keep object spilling in emptyDir; that must not pin idle GPU nodes forever.
        "skip-nodes-with-local-storage" = false
      }
    },
    var.cluster_autoscaler_image_tag == null ? {} : { image = { tag = var.cluster_autoscaler_image_tag } }
  ))]

  lifecycle {
    precondition {
      condition     = var.cluster_autoscaler_service_account != null
      error_message = "install_cluster_autoscaler needs cluster_autoscaler_service_account (namespace, name and IAM role ARN)."
    }
  }
}

# --- Workload identities ----------------------------------------------------------------------

resource "kubernetes_namespace_v1" "workload" {
  for_each = var.create_workload_namespaces ? toset(var.workload_namespaces) : toset([])

  metadata {
    name = each.value
    labels = {
      "app.kubernetes.io/managed-by" = "terraform"
      "mlplane.dev/workloads"        = "true"
    }
  }
}

# One service account per workload namespace and kind, the same name in every namespace (the
# operator's MLPLANE_TRAINING/SERVING_SERVICE_ACCOUNT). Each is annotated with its namespace's
# own IAM role, whose trust policy admits exactly that namespace/name pair.
resource "kubernetes_service_account_v1" "workload" {
  for_each = local.workload_service_accounts

  metadata {
    name      = each.value.name
    namespace = each.value.namespace
    labels = {
      "app.kubernetes.io/managed-by" = "terraform"
      "app.kubernetes.io/part-of"    = "mlplane"
      "mlplane.dev/workload"         = each.value.kind
    }
    annotations = { for k, v in { (local.irsa_annotation) = each.value.role_arn } : k => v if v != null }
  }

  depends_on = [kubernetes_namespace_v1.workload]
}

# --- mlplane ----------------------------------------------------------------------------------

resource "helm_release" "mlplane" {
  count = var.install_mlplane ? 1 : 0

  name             = "mlplane"
  repository       = var.mlplane_chart_repository
  chart            = var.mlplane_chart_repository == null ? var.mlplane_chart_path : "mlplane"
  version          = var.mlplane_chart_version
  namespace        = var.mlplane_namespace
  create_namespace = true
  atomic           = true
  cleanup_on_fail  = true
  wait             = true
  timeout          = var.helm_timeout_seconds
  max_history      = 10

  values = concat([yamlencode(local.mlplane_values)], var.mlplane_extra_values)

  # The operator creates RayJobs and RayServices: KubeRay's CRDs must be served first.
  depends_on = [helm_release.kuberay_operator, kubernetes_service_account_v1.workload]

  lifecycle {
    precondition {
      condition     = var.mlflow_tracking_uri != null
      error_message = "install_mlplane needs mlflow_tracking_uri: the operator resolves models through the MLflow registry."
    }
    precondition {
      condition     = var.mlplane_chart_repository != null || var.mlplane_chart_path != null
      error_message = "install_mlplane needs mlplane_chart_path or mlplane_chart_repository."
    }
  }
}
