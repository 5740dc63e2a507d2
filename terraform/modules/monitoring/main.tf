# Alarms on the gateway's own metrics (gateway/src/metrics.rs, scraped from /metrics by the
# CloudWatch agent or ADOT into the namespace below) and on the load balancers' view of /readyz.
#
# Counters (*_total) are taken as the agent publishes them: the increase since the previous
# scrape, so Sum over a period is the number of events in it, across every pod. Gauges
# (paygate_audit_backlog_bytes) are published as they are; Maximum is the worst pod.

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = var.kms_key_arn
}

resource "aws_sns_topic_subscription" "email" {
  for_each = toset(var.alarm_emails)

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]

  # PCI DSS 10.7.2 and key management: any increase is an incident.
  any_increase = {
    "audit-journal-failures" = {
      metric      = "paygate_audit_journal_failures_total"
      description = "The audit journal failed to take a record (PCI DSS 10.7.2: audit logging itself failing)."
    }
    "audit-shipping-failures" = {
      metric      = "paygate_audit_shipping_failures_total"
      description = "Shipping sealed audit segments to the Object Lock bucket failed."
    }
    "audit-outbox-tampered" = {
      metric      = "paygate_audit_outbox_tampered_total"
      description = "Audit outbox rows failed their MAC or place check, or a gap was found (PCI DSS 10.3.2)."
    }
    "key-failures" = {
      metric      = "paygate_key_failures_total"
      description = "A request needed a key the key provider (KMS) could not give."
    }
    "ledger-invariant-alerts" = {
      metric      = "paygate_ledger_invariant_alerts_total"
      description = "A ledger invariant check failed."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "any_increase" {
  for_each = local.any_increase

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = var.namespace
  metric_name         = each.value.metric
  dimensions          = var.dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Sealed segments waiting for the bucket. At audit.backlog_bytes_max payments are refused with
# AUDIT_UNAVAILABLE; this alarm comes first.
resource "aws_cloudwatch_metric_alarm" "audit_backlog" {
  alarm_name          = "${var.name}-audit-backlog"
  alarm_description   = "Sealed audit segments not yet in write-once storage exceed ${var.audit_backlog_alarm_bytes} bytes."
  namespace           = var.namespace
  metric_name         = "paygate_audit_backlog_bytes"
  dimensions          = var.dimensions
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.audit_backlog_alarm_bytes
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The metrics themselves stop: the scrape or the gateway is down (monitoring must not fail
# silently, PCI DSS 10.7.2). paygate_audit_backlog_bytes is published on every scrape.
resource "aws_cloudwatch_metric_alarm" "metrics_missing" {
  alarm_name          = "${var.name}-metrics-missing"
  alarm_description   = "No gateway metrics for 5 minutes: the gateway or its metrics pipeline is down."
  namespace           = var.namespace
  metric_name         = "paygate_audit_backlog_bytes"
  dimensions          = var.dimensions
  statistic           = "SampleCount"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Refusals by stable error code: paygate_refusals_total{code="..."}.
resource "aws_cloudwatch_metric_alarm" "refusals" {
  for_each = var.refusal_alarm_thresholds

  alarm_name          = "${var.name}-refusals-${lower(replace(each.key, "_", "-"))}"
  alarm_description   = "Refusals with code ${each.key} above ${each.value} in 5 minutes."
  namespace           = var.namespace
  metric_name         = "paygate_refusals_total"
  dimensions          = merge(var.dimensions, { code = each.key })
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Readiness: both load balancers health-check /readyz (database, audit journal, key provider,
# broker and pipeline all usable).
resource "aws_cloudwatch_metric_alarm" "api_ready" {
  alarm_name          = "${var.name}-api-ready-replicas"
  alarm_description   = "Fewer than ${var.min_ready_replicas} gateway pods pass /readyz behind the API load balancer."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  dimensions          = { LoadBalancer = var.api_lb_arn_suffix, TargetGroup = var.api_target_group_arn_suffix }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "LessThanThreshold"
  threshold           = var.min_ready_replicas
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "mqtt_ready" {
  alarm_name          = "${var.name}-mqtt-ready-replicas"
  alarm_description   = "Fewer than ${var.min_ready_replicas} gateway pods pass /readyz behind the MQTT load balancer."
  namespace           = "AWS/NetworkELB"
  metric_name         = "HealthyHostCount"
  dimensions          = { LoadBalancer = var.mqtt_lb_arn_suffix, TargetGroup = var.mqtt_target_group_arn_suffix }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "LessThanThreshold"
  threshold           = var.min_ready_replicas
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "db_storage" {
  alarm_name          = "${var.name}-db-free-storage"
  alarm_description   = "Less than 10 GiB free on the database."
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  dimensions          = { DBInstanceIdentifier = var.db_instance_id }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "LessThanThreshold"
  threshold           = 10737418240
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "db_cpu" {
  alarm_name          = "${var.name}-db-cpu"
  alarm_description   = "Database CPU above 80% for 15 minutes."
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = var.db_instance_id }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 80
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}
