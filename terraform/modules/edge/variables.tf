variable "name" {
  description = "Name prefix."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's range (where the targets are)."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancers."
  type        = list(string)
}

variable "target_security_group_id" {
  description = "Security group of the gateway pods (the EKS cluster security group)."
  type        = string
}

variable "mqtt_allowed_cidrs" {
  description = "Where devices connect from."
  type        = list(string)
}

variable "http_allowed_cidrs" {
  description = "Where HTTP API callers connect from."
  type        = list(string)
}

variable "http_certificate_arn" {
  description = "ACM certificate of the HTTP API's public name."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket of the ALB's access logs (prefix elb/)."
  type        = string
}

variable "waf_rate_limit_per_5_minutes" {
  description = "Requests per client IP in 5 minutes before WAF blocks."
  type        = number
}

variable "logs_kms_key_arn" {
  description = "CMK of the WAF log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the WAF log group (days)."
  type        = number
}
