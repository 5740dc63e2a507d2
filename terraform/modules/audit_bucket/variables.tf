variable "bucket_name" {
  description = "Bucket name."
  type        = string
}

variable "retention_days" {
  description = "COMPLIANCE-mode default retention (days)."
  type        = number

  validation {
    condition     = var.retention_days >= 365
    error_message = "PCI DSS 10.5.1: at least 365 days."
  }
}

variable "access_log_bucket" {
  description = "Bucket (same account and region) that receives this bucket's server access logs."
  type        = string
}

variable "admin_role_arns" {
  description = "The only principals that may change Object Lock and versioning configuration."
  type        = list(string)
}

variable "writer_role_arns" {
  description = "Roles (this or another account) that write and read audit objects under writer_prefix."
  type        = list(string)
  default     = []
}

variable "writer_prefix" {
  description = "Key prefix the writers may use."
  type        = string
  default     = ""
}

variable "extra_bucket_policy_json" {
  description = "Further bucket policy statements (a policy document), e.g. CloudTrail's delivery."
  type        = string
  default     = null
}

variable "extra_key_policy_json" {
  description = "Further key policy statements (a policy document), e.g. CloudTrail's use of the key."
  type        = string
  default     = null
}
