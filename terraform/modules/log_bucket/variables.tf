variable "bucket_name" {
  description = "Bucket name."
  type        = string
}

variable "retention_days" {
  description = "How long access logs are kept (days)."
  type        = number

  validation {
    condition     = var.retention_days >= 365
    error_message = "PCI DSS 10.5.1: at least 365 days."
  }
}

variable "allow_load_balancer_logs" {
  description = "Let Elastic Load Balancing deliver access logs here."
  type        = bool
  default     = false
}
