output "kuberay_operator_namespace" {
  description = "Namespace the KubeRay operator runs in."
  value       = helm_release.kuberay_operator.namespace
}

output "kuberay_chart_version" {
  description = "Installed kuberay-operator chart version."
  value       = helm_release.kuberay_operator.version
}

output "mlplane_release" {
  description = "Name, namespace and chart of the mlplane release, or null when install_mlplane is false."
  value = var.install_mlplane ? {
    name      = helm_release.mlplane[0].name
    namespace = helm_release.mlplane[0].namespace
    chart     = helm_release.mlplane[0].chart
  } : null
}

output "mlplane_values" {
  description = "The values this module computes for the mlplane chart (before mlplane_extra_values), for review or for installing the chart by other means (e.g. Argo CD)."
  value       = local.mlplane_values
}

output "workload_service_accounts" {
  description = "Service accounts created for training and serving, keyed by namespace/kind, with the IAM role each is bound to."
  value = {
    for key, sa in local.workload_service_accounts : key => {
      namespace = sa.namespace
      name      = sa.name
      role_arn  = sa.role_arn
    }
  }
}
