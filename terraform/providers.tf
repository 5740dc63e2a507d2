# The account that runs paygate.
provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

# The witness account: a second, separately administered account that keeps a write-once copy of
# every audit checkpoint (audit.witness.s3). Terraform reaches it through a role of its own, so
# nobody holding only the paygate account can remove both copies.
provider "aws" {
  alias  = "witness"
  region = var.witness_region

  assume_role {
    role_arn     = var.witness_terraform_role_arn
    session_name = "paygate-terraform-${var.environment}"
  }

  default_tags {
    tags = local.tags
  }
}
