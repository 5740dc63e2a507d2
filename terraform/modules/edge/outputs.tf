output "mqtt_dns_name" {
  description = "Name devices connect to (CNAME your MQTT host name here)."
  value       = aws_lb.mqtt.dns_name
}

output "api_dns_name" {
  description = "Name API callers connect to (alias your API host name here)."
  value       = aws_lb.api.dns_name
}

output "mqtt_target_group_arn" {
  description = "Target group for the gateway's MQTT port (TargetGroupBinding)."
  value       = aws_lb_target_group.mqtt.arn
}

output "api_target_group_arn" {
  description = "Target group for the gateway's HTTPS API port (TargetGroupBinding)."
  value       = aws_lb_target_group.api.arn
}

output "mqtt_lb_arn_suffix" {
  description = "CloudWatch dimension LoadBalancer of the NLB."
  value       = aws_lb.mqtt.arn_suffix
}

output "mqtt_target_group_arn_suffix" {
  description = "CloudWatch dimension TargetGroup of the MQTT target group."
  value       = aws_lb_target_group.mqtt.arn_suffix
}

output "api_lb_arn_suffix" {
  description = "CloudWatch dimension LoadBalancer of the ALB."
  value       = aws_lb.api.arn_suffix
}

output "api_target_group_arn_suffix" {
  description = "CloudWatch dimension TargetGroup of the API target group."
  value       = aws_lb_target_group.api.arn_suffix
}

output "web_acl_arn" {
  description = "The WAF web ACL."
  value       = aws_wafv2_web_acl.api.arn
}
