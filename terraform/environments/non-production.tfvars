# Non-production: two zones, spot nodes, a single-AZ database, one NAT gateway. The audit
# buckets keep exactly the production settings (COMPLIANCE mode, at least 365 days).
environment        = "non-production"
region             = "ap-south-1"
availability_zones = ["ap-south-1a", "ap-south-1b"]
vpc_cidr           = "10.41.0.0/16"
single_nat_gateway = true

eks_version             = "1.31"
eks_node_instance_types = ["m6i.large", "m5.large", "m6a.large"]
eks_node_capacity_type  = "SPOT"
eks_node_min            = 2
eks_node_desired        = 2
eks_node_max            = 4

db_instance_class            = "db.t4g.medium"
db_multi_az                  = false
db_allocated_storage_gib     = 50
db_max_allocated_storage_gib = 200
db_backup_retention_days     = 7
db_iam_auth_enabled          = false

audit_retention_days          = 365
log_retention_days            = 365
cloudwatch_log_retention_days = 365

witness_region                 = "ap-south-2"
witness_terraform_role_arn     = "arn:aws:iam::444444444444:role/paygate-witness-terraform"
bucket_admin_role_arns         = ["arn:aws:iam::333333333333:role/paygate-terraform"]
witness_bucket_admin_role_arns = ["arn:aws:iam::444444444444:role/paygate-witness-terraform"]

http_certificate_arn         = "arn:aws:acm:ap-south-1:333333333333:certificate/00000000-0000-0000-0000-000000000000"
waf_rate_limit_per_5_minutes = 500
gateway_min_ready_replicas   = 2

alarm_emails = []
