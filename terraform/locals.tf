data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_caller_identity" "witness" {
  provider = aws.witness
}

locals {
  name       = "paygate-${var.environment}"
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  tags = merge(var.tags, {
    Project     = "paygate"
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  # The gateway's Kubernetes identity (IRSA): system:serviceaccount:<namespace>:<name>.
  gateway_subject = "system:serviceaccount:${var.gateway_namespace}:${var.gateway_service_account}"

  # Bucket names are global: the account id keeps them unique.
  audit_bucket_name      = "${local.name}-audit-${local.account_id}"
  witness_bucket_name    = "${local.name}-audit-witness-${data.aws_caller_identity.witness.account_id}"
  cloudtrail_bucket_name = "${local.name}-cloudtrail-${local.account_id}"
  # Named (iam.tf gives the role this name) rather than referenced: the bucket and key policies
  # match it by aws:PrincipalArn, so they need not wait for the role, and checkov can still
  # resolve the audit buckets' settings (a resource reference in a module's arguments stops it).
  gateway_role_arn = "arn:${local.partition}:iam::${local.account_id}:role/${local.name}-gateway"
  cloudtrail_name  = "${local.name}-trail"
  cloudtrail_arn   = "arn:${local.partition}:cloudtrail:${var.region}:${local.account_id}:trail/${local.cloudtrail_name}"
}
