# Customer-managed keys, one per purpose, each rotated yearly by KMS.
#   envelope: wraps the gateway's data keys (keys.provider = "aws_kms", keys.kms_key_id);
#             usable by the gateway's role only, only with its encryption context.
#   data:     RDS storage, snapshots, Performance Insights, the database secrets.
#   platform: EKS secrets, CloudWatch log groups, the alarm topic.
# The audit buckets' keys live with the buckets (modules/audit_bucket).

locals {
  account_root = "arn:${local.partition}:iam::${local.account_id}:root"
}

# ---- envelope ------------------------------------------------------------------------------

data "aws_iam_policy_document" "envelope_key" {
  #checkov:skip=CKV_AWS_109:A key policy: the account root may administer the key (policy, grants, rotation, deletion) but not use it; cryptographic use is granted only to the gateway role, with its encryption context.
  #checkov:skip=CKV_AWS_111:A key policy: the account root may administer the key (policy, grants, rotation, deletion) but not use it; cryptographic use is granted only to the gateway role, with its encryption context.
  #checkov:skip=CKV_AWS_356:In a key policy "Resource": "*" means this key alone; nothing else can be named there.
  # The account administers the key but IAM policies cannot grant its cryptographic use:
  # only the statement below can.
  statement {
    sid = "AccountAdministersKey"
    actions = [
      "kms:Create*",
      "kms:Describe*",
      "kms:Enable*",
      "kms:List*",
      "kms:Put*",
      "kms:Update*",
      "kms:Revoke*",
      "kms:Disable*",
      "kms:Get*",
      "kms:Delete*",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:ScheduleKeyDeletion",
      "kms:CancelKeyDeletion",
      "kms:RotateKeyOnDemand",
    ]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }

  statement {
    sid       = "GatewayWrapsDataKeys"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.gateway.arn]
    }

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
}

resource "aws_kms_key" "envelope" {
  description             = "${local.name}: envelope encryption of sensitive fields (keys.kms_key_id)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.envelope_key.json
}

resource "aws_kms_alias" "envelope" {
  name          = "alias/${local.name}-envelope"
  target_key_id = aws_kms_key.envelope.key_id
}

# ---- data ----------------------------------------------------------------------------------

data "aws_iam_policy_document" "data_key" {
  #checkov:skip=CKV_AWS_109:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone.
  #checkov:skip=CKV_AWS_111:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone.
  #checkov:skip=CKV_AWS_356:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone.
  statement {
    sid       = "AccountAdministersAndUsesKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }
}

resource "aws_kms_key" "data" {
  description             = "${local.name}: RDS storage, backups and database secrets"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.data_key.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${local.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

# ---- platform ------------------------------------------------------------------------------

data "aws_iam_policy_document" "platform_key" {
  #checkov:skip=CKV_AWS_109:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone. The service statements are bound to this account by condition.
  #checkov:skip=CKV_AWS_111:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone. The service statements are bound to this account by condition.
  #checkov:skip=CKV_AWS_356:A key policy: the principal is this account root, so administration goes through IAM policies (AWS's default key policy); Resource "*" is this key alone. The service statements are bound to this account by condition.
  statement {
    sid       = "AccountAdministersAndUsesKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }

  statement {
    sid = "CloudWatchLogsEncryptsLogGroups"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:*"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublishToTopic"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_kms_key" "platform" {
  description             = "${local.name}: EKS secrets, log groups, alarm topic"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.platform_key.json
}

resource "aws_kms_alias" "platform" {
  name          = "alias/${local.name}-platform"
  target_key_id = aws_kms_key.platform.key_id
}
