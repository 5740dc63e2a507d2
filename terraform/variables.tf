# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------

variable "environment" {
  description = "production or non-production; names every resource."
  type        = string

  validation {
    condition     = contains(["production", "non-production"], var.environment)
    error_message = "environment must be production or non-production."
  }
}

variable "region" {
  description = "The region paygate runs in."
  type        = string
  default     = "ap-south-1"
}

variable "availability_zones" {
  description = "Availability zones: three in production, two in non-production."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3
    error_message = "Two or three availability zones."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "The VPC's range (a /16)."
  type        = string
  default     = "10.40.0.0/16"
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper, non-production) instead of one per zone."
  type        = bool
  default     = false
}

variable "cloudwatch_log_retention_days" {
  description = "Retention of the CloudWatch log groups: VPC flow logs, EKS control plane, RDS, WAF, CloudTrail."
  type        = number
  default     = 365

  validation {
    condition     = var.cloudwatch_log_retention_days >= 365
    error_message = "PCI DSS 10.5.1: keep logs at least 12 months."
  }
}

# ---------------------------------------------------------------------------------------------
# EKS
# ---------------------------------------------------------------------------------------------

variable "eks_version" {
  description = "Kubernetes version of the EKS control plane."
  type        = string
  default     = "1.31"
}

variable "eks_node_instance_types" {
  description = "Instance types of the worker node group."
  type        = list(string)
}

variable "eks_node_capacity_type" {
  description = "ON_DEMAND (production) or SPOT (non-production)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.eks_node_capacity_type)
    error_message = "ON_DEMAND or SPOT."
  }
}

variable "eks_node_min" {
  description = "Fewest worker nodes."
  type        = number
}

variable "eks_node_desired" {
  description = "Worker nodes at creation (the cluster autoscaler moves it afterwards)."
  type        = number
}

variable "eks_node_max" {
  description = "Most worker nodes."
  type        = number
}

# ---------------------------------------------------------------------------------------------
# Database (RDS PostgreSQL 15)
# ---------------------------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
}

variable "db_multi_az" {
  description = "A synchronous standby in another zone (production)."
  type        = bool
}

variable "db_allocated_storage_gib" {
  description = "Initial storage (GiB)."
  type        = number
}

variable "db_max_allocated_storage_gib" {
  description = "Storage autoscaling ceiling (GiB)."
  type        = number
}

variable "db_backup_retention_days" {
  description = "Automated backups kept (days, 1 to 35)."
  type        = number

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "Keep backups 7 to 35 days."
  }
}

variable "db_iam_auth_enabled" {
  description = "Allow IAM database authentication (for operators' break-glass access; the gateway uses a password URL)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Audit trail (audit.s3, audit.witness.s3)
# ---------------------------------------------------------------------------------------------

variable "audit_retention_days" {
  description = "COMPLIANCE-mode default retention of the audit buckets (days). Set audit.s3.retention_days and audit.witness.s3.retention_days to the same number."
  type        = number
  default     = 365

  validation {
    condition     = var.audit_retention_days >= 365
    error_message = "PCI DSS 10.5.1: at least 365 days."
  }
}

variable "log_retention_days" {
  description = "How long access logs (S3 server access, load balancer) are kept."
  type        = number
  default     = 400

  validation {
    condition     = var.log_retention_days >= 365
    error_message = "PCI DSS 10.5.1: at least 365 days."
  }
}

variable "witness_region" {
  description = "Region of the witness bucket (in the witness account)."
  type        = string
  default     = "ap-south-2"
}

variable "witness_terraform_role_arn" {
  description = "Role Terraform assumes in the witness account."
  type        = string
}

variable "bucket_admin_role_arns" {
  description = "Principals (the Terraform deploy role) that may still change the audit buckets' Object Lock and versioning configuration in this account."
  type        = list(string)
}

variable "witness_bucket_admin_role_arns" {
  description = "The same, in the witness account."
  type        = list(string)
}

# ---------------------------------------------------------------------------------------------
# Gateway identity (IRSA) and configuration
# ---------------------------------------------------------------------------------------------

variable "gateway_namespace" {
  description = "Kubernetes namespace of the gateway."
  type        = string
  default     = "paygate"
}

variable "gateway_service_account" {
  description = "Kubernetes service account of the gateway pods (deploy/kubernetes/base/serviceaccount.yaml)."
  type        = string
  default     = "paygate"
}

variable "gateway_tenant" {
  description = "keys.tenant: the tenant every KMS encryption context names; the gateway's role can use the key for no other."
  type        = string
  default     = "default"
}

variable "audit_prefix" {
  description = "audit.s3.prefix."
  type        = string
  default     = "paygate-audit/"
}

variable "witness_prefix" {
  description = "audit.witness.s3.prefix."
  type        = string
  default     = "paygate-audit-witness/"
}

variable "secrets_sync_namespace" {
  description = "Namespace of the secrets-sync controller (External Secrets Operator) that copies the database URL into the gateway's namespace."
  type        = string
  default     = "external-secrets"
}

variable "secrets_sync_service_account" {
  description = "Service account of the secrets-sync controller."
  type        = string
  default     = "external-secrets"
}

# ---------------------------------------------------------------------------------------------
# Edge: MQTT (NLB, 8883) and the HTTP API (ALB + WAF, 443 -> 8443)
# ---------------------------------------------------------------------------------------------

variable "mqtt_allowed_cidrs" {
  description = "Where devices connect from (MQTT over TLS, 8883): the NLB keeps their addresses, so the pods admit these too."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "http_allowed_cidrs" {
  description = "Where HTTP API callers connect from (443)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "http_certificate_arn" {
  description = "ACM certificate of the HTTP API's public name (the ALB's HTTPS listener)."
  type        = string
}

variable "waf_rate_limit_per_5_minutes" {
  description = "Requests one client IP may make to the HTTP API in 5 minutes before WAF blocks it."
  type        = number
  default     = 2000
}

# ---------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------

variable "alarm_emails" {
  description = "Addresses subscribed to the alarm topic (each confirms by mail)."
  type        = list(string)
  default     = []
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the CloudWatch agent / ADOT publishes the gateway's Prometheus metrics under."
  type        = string
  default     = "paygate"
}

variable "audit_backlog_alarm_bytes" {
  description = "Alarm when sealed segments not yet shipped exceed this (half of audit.backlog_bytes_max, 256 MiB)."
  type        = number
  default     = 134217728
}

variable "refusal_alarm_thresholds" {
  description = "Refusals by code (paygate_refusals_total{code}) in 5 minutes above which to alarm; 0 means any."
  type        = map(number)
  default = {
    AUDIT_UNAVAILABLE  = 0
    KEY_UNAVAILABLE    = 0
    INTERNAL_ERROR     = 0
    OVERLOADED         = 100
    SIGNATURE_INVALID  = 50
    TLS_CERT_REVOKED   = 10
    TLS_CERT_UNTRUSTED = 50
    CLIENT_ID_MISMATCH = 10
  }
}

variable "gateway_min_ready_replicas" {
  description = "Alarm when fewer gateway pods than this pass /readyz behind the load balancers."
  type        = number
  default     = 2
}
