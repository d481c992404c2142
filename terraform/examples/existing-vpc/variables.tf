variable "region" {
  description = "AWS region of the VPC."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name of the installation (the EKS cluster's name)."
  type        = string
  default     = "mlplane-shared"
}

variable "vpc_id" {
  description = "The existing VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets of the VPC in at least two zones, with egress (NAT or VPC endpoints)."
  type        = list(string)
}

variable "vpc_cidr_blocks" {
  description = "CIDR blocks of the VPC (narrows the operator's NetworkPolicy egress to the API server)."
  type        = list(string)
}
