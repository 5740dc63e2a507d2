# Production: three zones, on-demand nodes, Multi-AZ database, a NAT gateway per zone.
environment        = "production"
region             = "ap-south-1"
availability_zones = ["ap-south-1a", "ap-south-1b", "ap-south-1c"]
vpc_cidr           = "10.40.0.0/16"
single_nat_gateway = false

eks_version             = "1.31"
eks_node_instance_types = ["m6i.xlarge"]
eks_node_capacity_type  = "ON_DEMAND"
eks_node_min            = 3
eks_node_desired        = 3
eks_node_max            = 9

db_instance_class            = "db.r6g.xlarge"
db_multi_az                  = true
db_allocated_storage_gib     = 200
db_max_allocated_storage_gib = 1000
db_backup_retention_days     = 35
db_iam_auth_enabled          = true

# PCI DSS 10.5.1 asks 12 months; 13 leaves room for an audit that starts late.
audit_retention_days          = 400
log_retention_days            = 400
cloudwatch_log_retention_days = 400

witness_region                 = "ap-south-2"
witness_terraform_role_arn     = "arn:aws:iam::222222222222:role/paygate-witness-terraform"
bucket_admin_role_arns         = ["arn:aws:iam::111111111111:role/paygate-terraform"]
witness_bucket_admin_role_arns = ["arn:aws:iam::222222222222:role/paygate-witness-terraform"]

http_certificate_arn         = "arn:aws:acm:ap-south-1:111111111111:certificate/00000000-0000-0000-0000-000000000000"
waf_rate_limit_per_5_minutes = 2000
gateway_min_ready_replicas   = 3

alarm_emails = ["paygate-oncall@example.com"]
