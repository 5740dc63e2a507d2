output "bucket" {
  description = "Bucket name."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "Bucket ARN."
  value       = aws_s3_bucket.this.arn
}

output "kms_key_arn" {
  description = "The bucket's SSE-KMS key."
  value       = aws_kms_key.this.arn
}

output "region" {
  description = "The bucket's region."
  value       = data.aws_region.current.name
}

output "retention_days" {
  description = "COMPLIANCE-mode default retention (days)."
  value       = var.retention_days
}
