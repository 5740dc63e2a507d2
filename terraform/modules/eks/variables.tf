variable "name" {
  description = "Cluster name."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes version."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the control-plane interfaces and the nodes."
  type        = list(string)
}

variable "secrets_kms_key_arn" {
  description = "CMK that encrypts Kubernetes secrets (envelope encryption in etcd)."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "CMK of the control-plane log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the control-plane logs (days)."
  type        = number
}

variable "node_instance_types" {
  description = "Worker instance types."
  type        = list(string)
}

variable "node_capacity_type" {
  description = "ON_DEMAND or SPOT."
  type        = string
}

variable "node_min" {
  description = "Fewest nodes."
  type        = number
}

variable "node_desired" {
  description = "Nodes at creation."
  type        = number
}

variable "node_max" {
  description = "Most nodes."
  type        = number
}
