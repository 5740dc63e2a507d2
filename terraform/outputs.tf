# What the gateway's configuration needs (see README, "Wiring the gateway").

output "gateway_role_arn" {
  description = "Annotate the gateway's service account: eks.amazonaws.com/role-arn = this."
  value       = aws_iam_role.gateway.arn
}

output "kms_key_id" {
  description = "keys.kms_key_id (with keys.provider = \"aws_kms\")."
  value       = aws_kms_key.envelope.arn
}

output "kms_key_alias" {
  description = "Alias of the envelope key."
  value       = aws_kms_alias.envelope.name
}

output "audit_s3" {
  description = "[audit.s3] (with audit.store = \"s3\")."
  value = {
    bucket         = module.audit_bucket.bucket
    prefix         = var.audit_prefix
    region         = module.audit_bucket.region
    retention_days = module.audit_bucket.retention_days
  }
}

output "audit_witness_s3" {
  description = "[audit.witness.s3] (with audit.witness.store = \"s3\")."
  value = {
    bucket         = module.witness_bucket.bucket
    prefix         = var.witness_prefix
    region         = module.witness_bucket.region
    retention_days = module.witness_bucket.retention_days
  }
}

output "database_url_secret_arn" {
  description = "Secrets Manager secret holding database.url; synced into the Kubernetes Secret paygate-database (key url), read as env:PAYGATE_DATABASE_URL."
  value       = aws_secretsmanager_secret.database_url.arn
}

output "database" {
  description = "Where the database is; the master user's secret is for the bootstrap only."
  value = {
    host                   = module.database.address
    port                   = module.database.port
    name                   = module.database.db_name
    master_user_secret_arn = module.database.master_user_secret_arn
  }
}

output "secrets_sync_role_arn" {
  description = "Annotate the secrets-sync controller's service account with this."
  value       = aws_iam_role.secrets_sync.arn
}

output "eks_cluster_name" {
  description = "EKS cluster."
  value       = module.eks.cluster_name
}

output "mqtt_endpoint" {
  description = "Devices connect here on 8883 (the gateway's server certificate must name your CNAME)."
  value       = module.edge.mqtt_dns_name
}

output "api_endpoint" {
  description = "HTTP API callers connect here on 443."
  value       = module.edge.api_dns_name
}

output "target_group_arns" {
  description = "TargetGroupBinding targets: mqtt -> the gateway's 8883, api -> its 8443."
  value = {
    mqtt = module.edge.mqtt_target_group_arn
    api  = module.edge.api_target_group_arn
  }
}

output "alarm_topic_arn" {
  description = "SNS topic of every alarm."
  value       = module.monitoring.topic_arn
}

output "gateway_environment" {
  description = "The same settings as PAYGATE__ environment variables for the gateway's pods."
  value = {
    PAYGATE__KEYS__PROVIDER                     = "aws_kms"
    PAYGATE__KEYS__KMS_KEY_ID                   = aws_kms_key.envelope.arn
    PAYGATE__KEYS__KMS_REGION                   = var.region
    PAYGATE__KEYS__TENANT                       = var.gateway_tenant
    PAYGATE__AUDIT__STORE                       = "s3"
    PAYGATE__AUDIT__S3__BUCKET                  = module.audit_bucket.bucket
    PAYGATE__AUDIT__S3__PREFIX                  = var.audit_prefix
    PAYGATE__AUDIT__S3__REGION                  = module.audit_bucket.region
    PAYGATE__AUDIT__S3__RETENTION_DAYS          = tostring(var.audit_retention_days)
    PAYGATE__AUDIT__WITNESS__STORE              = "s3"
    PAYGATE__AUDIT__WITNESS__S3__BUCKET         = module.witness_bucket.bucket
    PAYGATE__AUDIT__WITNESS__S3__PREFIX         = var.witness_prefix
    PAYGATE__AUDIT__WITNESS__S3__REGION         = module.witness_bucket.region
    PAYGATE__AUDIT__WITNESS__S3__RETENTION_DAYS = tostring(var.audit_retention_days)
    PAYGATE__MQTT__LISTEN                       = "0.0.0.0:8883"
    PAYGATE__HTTP__LISTEN                       = "0.0.0.0:8443"
  }
}
