terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }

  # State in S3 (one state per environment), configured at init:
  #   terraform init -backend-config=environments/production.s3.tfbackend
  backend "s3" {}
}
