module "network" {
  source = "./modules/network"

  name                          = local.name
  cidr                          = var.vpc_cidr
  availability_zones            = var.availability_zones
  single_nat_gateway            = var.single_nat_gateway
  cluster_name                  = local.name
  cloudwatch_log_retention_days = var.cloudwatch_log_retention_days
  logs_kms_key_arn              = aws_kms_key.platform.arn
}

module "eks" {
  source = "./modules/eks"

  name                = local.name
  kubernetes_version  = var.eks_version
  vpc_id              = module.network.vpc_id
  subnet_ids          = module.network.private_subnet_ids
  secrets_kms_key_arn = aws_kms_key.platform.arn
  logs_kms_key_arn    = aws_kms_key.platform.arn
  log_retention_days  = var.cloudwatch_log_retention_days
  node_instance_types = var.eks_node_instance_types
  node_capacity_type  = var.eks_node_capacity_type
  node_min            = var.eks_node_min
  node_desired        = var.eks_node_desired
  node_max            = var.eks_node_max
}

module "database" {
  source = "./modules/database"

  name                      = local.name
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.database_subnet_ids
  client_security_group_id  = module.eks.cluster_security_group_id
  kms_key_arn               = aws_kms_key.data.arn
  instance_class            = var.db_instance_class
  multi_az                  = var.db_multi_az
  allocated_storage_gib     = var.db_allocated_storage_gib
  max_allocated_storage_gib = var.db_max_allocated_storage_gib
  backup_retention_days     = var.db_backup_retention_days
  iam_auth_enabled          = var.db_iam_auth_enabled
  log_retention_days        = var.cloudwatch_log_retention_days
  logs_kms_key_arn          = aws_kms_key.platform.arn
}

# ---- write-once storage --------------------------------------------------------------------

module "access_logs" {
  source = "./modules/log_bucket"

  bucket_name              = "${local.name}-access-logs-${local.account_id}"
  retention_days           = var.log_retention_days
  allow_load_balancer_logs = true
}

# audit.s3: sealed segments and checkpoints.
module "audit_bucket" {
  source = "./modules/audit_bucket"

  bucket_name       = local.audit_bucket_name
  retention_days    = var.audit_retention_days
  access_log_bucket = module.access_logs.bucket
  admin_role_arns   = var.bucket_admin_role_arns
  writer_role_arns  = [local.gateway_role_arn]
  writer_prefix     = var.audit_prefix
}

# audit.witness.s3: every checkpoint again, in the witness account.
module "witness_access_logs" {
  source = "./modules/log_bucket"
  providers = {
    aws = aws.witness
  }

  bucket_name    = "${local.name}-witness-access-logs-${data.aws_caller_identity.witness.account_id}"
  retention_days = var.log_retention_days
}

module "witness_bucket" {
  source = "./modules/audit_bucket"
  providers = {
    aws = aws.witness
  }

  bucket_name       = local.witness_bucket_name
  retention_days    = var.audit_retention_days
  access_log_bucket = module.witness_access_logs.bucket
  admin_role_arns   = var.witness_bucket_admin_role_arns
  writer_role_arns  = [local.gateway_role_arn]
  writer_prefix     = var.witness_prefix
}

# ---- edge ----------------------------------------------------------------------------------

module "edge" {
  source = "./modules/edge"

  name                         = local.name
  vpc_id                       = module.network.vpc_id
  vpc_cidr                     = module.network.vpc_cidr
  public_subnet_ids            = module.network.public_subnet_ids
  target_security_group_id     = module.eks.cluster_security_group_id
  mqtt_allowed_cidrs           = var.mqtt_allowed_cidrs
  http_allowed_cidrs           = var.http_allowed_cidrs
  http_certificate_arn         = var.http_certificate_arn
  access_log_bucket            = module.access_logs.bucket
  waf_rate_limit_per_5_minutes = var.waf_rate_limit_per_5_minutes
  logs_kms_key_arn             = aws_kms_key.platform.arn
  log_retention_days           = var.cloudwatch_log_retention_days
}

# ---- monitoring ----------------------------------------------------------------------------

module "monitoring" {
  source = "./modules/monitoring"

  name                         = local.name
  kms_key_arn                  = aws_kms_key.platform.arn
  alarm_emails                 = var.alarm_emails
  namespace                    = var.metrics_namespace
  dimensions                   = { ClusterName = module.eks.cluster_name, Namespace = var.gateway_namespace }
  audit_backlog_alarm_bytes    = var.audit_backlog_alarm_bytes
  refusal_alarm_thresholds     = var.refusal_alarm_thresholds
  min_ready_replicas           = var.gateway_min_ready_replicas
  api_lb_arn_suffix            = module.edge.api_lb_arn_suffix
  api_target_group_arn_suffix  = module.edge.api_target_group_arn_suffix
  mqtt_lb_arn_suffix           = module.edge.mqtt_lb_arn_suffix
  mqtt_target_group_arn_suffix = module.edge.mqtt_target_group_arn_suffix
  db_instance_id               = module.database.instance_id
}
