# A write-once audit bucket: versioned, Object Lock in COMPLIANCE mode with a default retention,
# SSE-KMS with a key of its own, no public access, TLS 1.2+ only, no deletes, no retention
# shortened, no governance bypass, lock configuration changeable only by the admin roles.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
  bucket_arn   = "arn:${data.aws_partition.current.partition}:s3:::${var.bucket_name}"
  s3_service   = "s3.${data.aws_region.current.name}.amazonaws.com"

  # Policies name the writers' accounts and match the roles by aws:PrincipalArn: a policy that
  # names a role directly is refused before the role exists, and breaks if it is recreated.
  writer_accounts = distinct([
    for arn in var.writer_role_arns : "arn:${data.aws_partition.current.partition}:iam::${split(":", arn)[4]}:root"
  ])
}

# ---- key -----------------------------------------------------------------------------------

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone. Writers may use it only through S3 (kms:ViaService).
  #checkov:skip=CKV_AWS_111:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone. Writers may use it only through S3 (kms:ViaService).
  #checkov:skip=CKV_AWS_356:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone. Writers may use it only through S3 (kms:ViaService).
  source_policy_documents = var.extra_key_policy_json == null ? [] : [var.extra_key_policy_json]

  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }

  # The writers (possibly in another account) use the key only through S3.
  dynamic "statement" {
    for_each = length(var.writer_role_arns) > 0 ? [1] : []

    content {
      sid       = "WritersUseKeyThroughS3"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = local.writer_accounts
      }

      condition {
        test     = "ArnEquals"
        variable = "aws:PrincipalArn"
        values   = var.writer_role_arns
      }

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.s3_service]
      }
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "SSE-KMS of ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.bucket_name}"
  target_key_id = aws_kms_key.this.key_id
}

# ---- bucket --------------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:No S3 replication: the gateway itself writes every checkpoint to a second Object Lock bucket in another account and region (audit.witness.s3); replicating the segments as well is left out (README).
  bucket              = var.bucket_name
  object_lock_enabled = true

  # Read by the custom checks in terraform/checks: an audit bucket must be write-once.
  tags = { DataClass = "audit" }
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    bucket_key_enabled = true

    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
  }
}

resource "aws_s3_bucket_logging" "this" {
  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${var.bucket_name}/"
}

# Objects stay (locked) as long as retention says; after 90 days they move to Glacier Instant
# Retrieval, which still answers in milliseconds (PCI DSS 10.5.1: 3 months immediately available).
resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "archive"
    status = "Enabled"

    filter {}

    transition {
      days          = 90
      storage_class = "GLACIER_IR"
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# Object-level events to EventBridge (change detection on the logs, PCI DSS 10.3.4).
resource "aws_s3_bucket_notification" "this" {
  bucket      = aws_s3_bucket.this.id
  eventbridge = true
}

data "aws_iam_policy_document" "bucket" {
  source_policy_documents = var.extra_bucket_policy_json == null ? [] : [var.extra_bucket_policy_json]

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyTlsOlderThan12"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  statement {
    sid       = "DenyDeletes"
    effect    = "Deny"
    actions   = ["s3:DeleteObject*", "s3:DeleteBucket"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }

  statement {
    sid       = "DenyGovernanceBypass"
    effect    = "Deny"
    actions   = ["s3:BypassGovernanceRetention"]
    resources = ["${local.bucket_arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }

  # A retention shorter than the default, on a new object or an existing one. One day of
  # margin: the gateway sets retain-until to its own clock plus audit.s3.retention_days.
  statement {
    sid       = "DenyShorterRetention"
    effect    = "Deny"
    actions   = ["s3:PutObject", "s3:PutObjectRetention"]
    resources = ["${local.bucket_arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:object-lock-remaining-retention-days"
      values   = [tostring(var.retention_days - 1)]
    }
  }

  # An explicit lock mode other than COMPLIANCE (GOVERNANCE could be bypassed).
  statement {
    sid       = "DenyModeOtherThanCompliance"
    effect    = "Deny"
    actions   = ["s3:PutObject", "s3:PutObjectRetention"]
    resources = ["${local.bucket_arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:object-lock-mode"
      values   = ["false"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "s3:object-lock-mode"
      values   = ["COMPLIANCE"]
    }
  }

  statement {
    sid    = "DenyLockConfigurationChanges"
    effect = "Deny"
    actions = [
      "s3:PutBucketObjectLockConfiguration",
      "s3:PutBucketVersioning",
    ]
    resources = [local.bucket_arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotLike"
      variable = "aws:PrincipalArn"
      values   = var.admin_role_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.writer_role_arns) > 0 ? [1] : []

    content {
      sid       = "WritersPutAndReadObjects"
      actions   = ["s3:PutObject", "s3:PutObjectRetention", "s3:GetObject"]
      resources = ["${local.bucket_arn}/${var.writer_prefix}*"]

      principals {
        type        = "AWS"
        identifiers = local.writer_accounts
      }

      condition {
        test     = "ArnEquals"
        variable = "aws:PrincipalArn"
        values   = var.writer_role_arns
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.writer_role_arns) > 0 ? [1] : []

    content {
      sid       = "WritersCheckBucket"
      actions   = ["s3:ListBucket", "s3:GetBucketVersioning", "s3:GetBucketObjectLockConfiguration"]
      resources = [local.bucket_arn]

      principals {
        type        = "AWS"
        identifiers = local.writer_accounts
      }

      condition {
        test     = "ArnEquals"
        variable = "aws:PrincipalArn"
        values   = var.writer_role_arns
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}
