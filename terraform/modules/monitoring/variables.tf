variable "name" {
  description = "Name prefix."
  type        = string
}

variable "kms_key_arn" {
  description = "CMK of the SNS topic."
  type        = string
}

variable "alarm_emails" {
  description = "Addresses subscribed to the topic."
  type        = list(string)
}

variable "namespace" {
  description = "CloudWatch namespace of the gateway's metrics."
  type        = string
}

variable "dimensions" {
  description = "Dimensions the CloudWatch agent / ADOT puts on every gateway metric (pods aggregated)."
  type        = map(string)
}

variable "audit_backlog_alarm_bytes" {
  description = "Alarm above this many bytes of sealed, unshipped audit segments."
  type        = number
}

variable "refusal_alarm_thresholds" {
  description = "Refusals by code in 5 minutes above which to alarm."
  type        = map(number)
}

variable "min_ready_replicas" {
  description = "Fewest gateway pods passing /readyz."
  type        = number
}

variable "api_lb_arn_suffix" {
  description = "ALB dimension."
  type        = string
}

variable "api_target_group_arn_suffix" {
  description = "API target group dimension."
  type        = string
}

variable "mqtt_lb_arn_suffix" {
  description = "NLB dimension."
  type        = string
}

variable "mqtt_target_group_arn_suffix" {
  description = "MQTT target group dimension."
  type        = string
}

variable "db_instance_id" {
  description = "RDS instance identifier."
  type        = string
}
