variable "name" {
  description = "Name prefix."
  type        = string
}

variable "cidr" {
  description = "The VPC's range (a /16)."
  type        = string
}

variable "availability_zones" {
  description = "Zones to spread the subnets over."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones instead of one per zone."
  type        = bool
}

variable "cluster_name" {
  description = "EKS cluster name, for the subnet discovery tags."
  type        = string
}

variable "cloudwatch_log_retention_days" {
  description = "Retention of the flow log group (days)."
  type        = number
}

variable "logs_kms_key_arn" {
  description = "KMS key of the flow log group."
  type        = string
}

variable "interface_endpoints" {
  description = "AWS services reached through interface endpoints instead of the NAT gateways."
  type        = list(string)
  default     = ["kms", "sts", "ecr.api", "ecr.dkr", "logs", "secretsmanager"]
}
