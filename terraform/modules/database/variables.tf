variable "name" {
  description = "Name prefix."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Database subnets (no route out)."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "The only security group allowed to connect (the EKS nodes and pods)."
  type        = string
}

variable "kms_key_arn" {
  description = "CMK of the storage, backups, snapshots, Performance Insights and the master secret."
  type        = string
}

variable "instance_class" {
  description = "Instance class."
  type        = string
}

variable "multi_az" {
  description = "A synchronous standby in another zone."
  type        = bool
}

variable "allocated_storage_gib" {
  description = "Initial storage (GiB)."
  type        = number
}

variable "max_allocated_storage_gib" {
  description = "Storage autoscaling ceiling (GiB)."
  type        = number
}

variable "backup_retention_days" {
  description = "Automated backups kept (days)."
  type        = number
}

variable "iam_auth_enabled" {
  description = "IAM database authentication."
  type        = bool
}

variable "log_retention_days" {
  description = "Retention of the exported PostgreSQL logs (days)."
  type        = number
}

variable "logs_kms_key_arn" {
  description = "CMK of the exported log groups."
  type        = string
}
