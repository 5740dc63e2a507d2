# The gateway's AWS identity: an IAM role its Kubernetes service account assumes (IRSA).
# It may wrap and unwrap data keys with the envelope key, and write and read audit objects in
# the two audit buckets. Nothing else: no deletes, no retention bypass, no other bucket or key.

data "aws_iam_policy_document" "gateway_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [module.eks.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_issuer}:sub"
      values   = [local.gateway_subject]
    }

    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gateway" {
  name                 = "${local.name}-gateway"
  description          = "paygate gateway pods (IRSA: ${local.gateway_subject})"
  assume_role_policy   = data.aws_iam_policy_document.gateway_assume.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "gateway" {
  # keys.provider = "aws_kms": the calls gateway/src/keys/provider.rs makes (GenerateDataKey,
  # Decrypt, ReEncrypt), only with paygate's encryption context for this tenant.
  statement {
    sid       = "EnvelopeKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"]
    resources = [aws_kms_key.envelope.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:app"
      values   = ["paygate"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:tenant"
      values   = [var.gateway_tenant]
    }
  }

  # SSE-KMS of the audit buckets: S3 asks for a data key on the gateway's behalf.
  statement {
    sid       = "AuditBucketKeysThroughS3"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [module.audit_bucket.kms_key_arn, module.witness_bucket.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = distinct(["s3.${var.region}.amazonaws.com", "s3.${var.witness_region}.amazonaws.com"])
    }
  }

  # gateway/src/audit/worm.rs: PutObject with COMPLIANCE retain-until (needs PutObjectRetention),
  # HeadObject and GetObject (GetObject), under the configured prefixes only.
  statement {
    sid     = "AuditObjects"
    actions = ["s3:PutObject", "s3:PutObjectRetention", "s3:GetObject"]
    resources = [
      "${module.audit_bucket.bucket_arn}/${var.audit_prefix}*",
      "${module.witness_bucket.bucket_arn}/${var.witness_prefix}*",
    ]
  }

  # The start-up checks (versioning and Object Lock both enabled) and the listing of segments.
  statement {
    sid       = "AuditBucketChecks"
    actions   = ["s3:GetBucketVersioning", "s3:GetBucketObjectLockConfiguration"]
    resources = [module.audit_bucket.bucket_arn, module.witness_bucket.bucket_arn]
  }

  statement {
    sid       = "AuditListUnderPrefix"
    actions   = ["s3:ListBucket"]
    resources = [module.audit_bucket.bucket_arn, module.witness_bucket.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.audit_prefix}*", "${var.witness_prefix}*"]
    }
  }
}

resource "aws_iam_role_policy" "gateway" {
  name   = "paygate-gateway"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.gateway.json
}

# ---- database.url --------------------------------------------------------------------------
# The gateway reads database.url = "env:PAYGATE_DATABASE_URL", from the Kubernetes Secret
# paygate-database (key url; deploy/kubernetes). Terraform makes the Secrets Manager secret;
# its value (postgres://paygate:...@host:5432/paygate?sslmode=verify-full&sslrootcert=...) is
# set when the application role is created (README). A secrets-sync controller (External Secrets Operator) with a role of its own
# copies it into the Kubernetes Secret, so the gateway's role needs no Secrets Manager access.

resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV2_AWS_57:The value is a URL holding the application role's password, set and rotated together with that role (ALTER ROLE) by the bootstrap runbook; a rotation Lambda for it is deliberately not part of this change (README). The RDS master secret is rotated by RDS.
  name                    = "${local.name}/gateway/database-url"
  description             = "paygate database.url (application role, TLS verify-full)"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 30
}

data "aws_iam_policy_document" "secrets_sync_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [module.eks.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.secrets_sync_namespace}:${var.secrets_sync_service_account}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "secrets_sync" {
  name               = "${local.name}-secrets-sync"
  description        = "Copies the gateway's database URL into Kubernetes (IRSA)"
  assume_role_policy = data.aws_iam_policy_document.secrets_sync_assume.json
}

data "aws_iam_policy_document" "secrets_sync" {
  statement {
    sid       = "ReadDatabaseUrl"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [aws_secretsmanager_secret.database_url.arn]
  }

  statement {
    sid       = "DecryptThroughSecretsManager"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "secrets_sync" {
  name   = "read-database-url"
  role   = aws_iam_role.secrets_sync.id
  policy = data.aws_iam_policy_document.secrets_sync.json
}
