output "address" {
  description = "Host name of the database (TLS certificate name)."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port."
  value       = aws_db_instance.this.port
}

output "db_name" {
  description = "Database name."
  value       = aws_db_instance.this.db_name
}

output "master_user_secret_arn" {
  description = "Secrets Manager secret of the master user (RDS rotates it)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "instance_id" {
  description = "Instance identifier (CloudWatch dimension)."
  value       = aws_db_instance.this.identifier
}
