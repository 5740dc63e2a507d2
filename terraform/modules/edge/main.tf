# The two ways in:
#   devices -> NLB :8883 (TCP, TLS passed through untouched) -> gateway :8883 (mqtt.listen)
#     the gateway terminates TLS and checks the client certificate itself;
#   callers -> WAF -> ALB :443 (HTTPS, ACM certificate) -> gateway :8443 (http.listen, HTTPS).
# Targets are pod IPs, registered by the AWS Load Balancer Controller through
# TargetGroupBinding objects that name these target groups (see README).

locals {
  mqtt_port = 8883
  http_port = 8443
}

# ---- MQTT over TLS: network load balancer, TCP passthrough ---------------------------------

resource "aws_security_group" "nlb" {
  name        = "${var.name}-mqtt-nlb"
  description = "MQTT over TLS from devices; to the gateway pods"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-mqtt-nlb" }
}

resource "aws_vpc_security_group_ingress_rule" "nlb_mqtt" {
  for_each = toset(var.mqtt_allowed_cidrs)

  security_group_id = aws_security_group.nlb.id
  description       = "MQTT over TLS from devices"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = local.mqtt_port
  to_port           = local.mqtt_port
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_targets" {
  for_each = toset([tostring(local.mqtt_port), tostring(local.http_port)])

  security_group_id = aws_security_group.nlb.id
  description       = "To the gateway pods (traffic and /readyz health checks)"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
}

resource "aws_lb" "mqtt" {
  #checkov:skip=CKV_AWS_91:NLB access logs exist only for TLS listeners; this listener is TCP so that TLS (and the client certificate) reaches the gateway untouched. The gateway logs every connection and refusal, and VPC flow logs record the flows.
  name                             = "${var.name}-mqtt"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.public_subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = true
}

resource "aws_lb_target_group" "mqtt" {
  name                 = "${var.name}-mqtt"
  port                 = local.mqtt_port
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  # The gateway sees the device's own address (the audit records' origination, PCI DSS
  # 10.2.2), so the pods admit the device ranges themselves (below), as
  # deploy/kubernetes/base/service-mqtt.yaml does.
  preserve_client_ip = true

  # A TCP check on 8883 would be an aborted TLS handshake every few seconds (counted as
  # TLS_HANDSHAKE_FAILED); the gateway's own readiness is the better signal.
  health_check {
    protocol            = "HTTPS"
    port                = tostring(local.http_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "mqtt" {
  #checkov:skip=CKV_AWS_2:The MQTT listener is TCP on purpose: TLS is passed through to the gateway, which terminates it and authenticates devices by client certificate (mutual TLS).
  #checkov:skip=CKV_AWS_103:Same listener: the TLS version is enforced by the gateway (rustls, TLS 1.2 and 1.3 only), not by the load balancer.
  load_balancer_arn = aws_lb.mqtt.arn
  port              = local.mqtt_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.mqtt.arn
  }
}

# ---- HTTP API: application load balancer behind WAF ----------------------------------------

resource "aws_security_group" "alb" {
  name        = "${var.name}-api-alb"
  description = "HTTPS from API callers; to the gateway pods"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-api-alb" }
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.http_allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from API callers"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_targets" {
  security_group_id = aws_security_group.alb.id
  description       = "To the gateway's HTTPS API"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = local.http_port
  to_port           = local.http_port
}

resource "aws_lb" "api" {
  name                       = "${var.name}-api"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  desync_mitigation_mode     = "strictest"

  access_logs {
    enabled = true
    bucket  = var.access_log_bucket
    prefix  = "elb"
  }
}

resource "aws_lb_target_group" "api" {
  name                 = "${var.name}-api"
  port                 = local.http_port
  protocol             = "HTTPS"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    protocol            = "HTTPS"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "api" {
  load_balancer_arn = aws_lb.api.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.http_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

# /metrics is scraped inside the cluster; from outside it does not exist.
resource "aws_lb_listener_rule" "hide_metrics" {
  listener_arn = aws_lb_listener.api.arn
  priority     = 10

  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = "{\"type\":\"about:blank\",\"title\":\"Not Found\",\"status\":404,\"code\":\"ROUTE_UNKNOWN\"}"
    }
  }
}

# The pods: MQTT from the devices (their addresses are kept), /readyz health checks from the
# NLB, the API from the ALB.
resource "aws_vpc_security_group_ingress_rule" "targets_mqtt_from_devices" {
  for_each = toset(var.mqtt_allowed_cidrs)

  security_group_id = var.target_security_group_id
  description       = "Gateway MQTT over TLS from devices, through the NLB"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = local.mqtt_port
  to_port           = local.mqtt_port
}

resource "aws_vpc_security_group_ingress_rule" "targets_health_from_nlb" {
  security_group_id            = var.target_security_group_id
  description                  = "Gateway /readyz health checks from the MQTT NLB"
  referenced_security_group_id = aws_security_group.nlb.id
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
}

resource "aws_vpc_security_group_ingress_rule" "targets_from_alb" {
  security_group_id            = var.target_security_group_id
  description                  = "Gateway HTTPS API from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
}

# ---- WAF -----------------------------------------------------------------------------------

resource "aws_wafv2_web_acl" "api" {
  name        = "${var.name}-api"
  description = "In front of the paygate HTTP API"
  scope       = "REGIONAL"

  default_action {
    allow {}
  }

  rule {
    name     = "rate-limit-per-ip"
    priority = 0

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit              = var.waf_rate_limit_per_5_minutes
        aggregate_key_type = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-rate-limit"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-ip-reputation"
    priority = 1

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesAmazonIpReputationList"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-ip-reputation"
      sampled_requests_enabled   = true
    }
  }

  # Tor exit nodes and anonymising proxies are blocked; hosting providers only count, since
  # wallet backends calling the API may well run in a cloud.
  rule {
    name     = "aws-anonymous-ip"
    priority = 2

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesAnonymousIpList"

        rule_action_override {
          name = "HostingProviderIPList"

          action_to_use {
            count {}
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-anonymous-ip"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-common"
    priority = 3

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"

        # The API takes bodies up to http.body_bytes_max (64 KiB) and checks that limit itself;
        # the group's 8 KiB body limit only counts.
        rule_action_override {
          name = "SizeRestrictions_BODY"

          action_to_use {
            count {}
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-common"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-known-bad-inputs"
    priority = 4

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.name}-api"
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_association" "api" {
  resource_arn = aws_lb.api.arn
  web_acl_arn  = aws_wafv2_web_acl.api.arn
}

# WAF log group names must start with aws-waf-logs-.
resource "aws_cloudwatch_log_group" "waf" {
  name              = "aws-waf-logs-${var.name}-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
}

resource "aws_wafv2_web_acl_logging_configuration" "api" {
  resource_arn            = aws_wafv2_web_acl.api.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  # Bearer tokens never reach the logs.
  redacted_fields {
    single_header {
      name = "authorization"
    }
  }

  redacted_fields {
    single_header {
      name = "cookie"
    }
  }
}
