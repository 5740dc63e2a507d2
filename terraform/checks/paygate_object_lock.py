"""paygate's own checkov checks: the audit trail's buckets must be write-once.

Loaded with `checkov --external-checks-dir terraform/checks`. Each check fails when it cannot
prove the property (a value checkov could not resolve counts as not proven).

  CKV_PAYGATE_1  Object Lock default retention is in COMPLIANCE mode (not GOVERNANCE, which a
                 principal with s3:BypassGovernanceRetention can shorten or remove).
  CKV_PAYGATE_2  Object Lock default retention is at least 365 days (days, or years * 365):
                 PCI DSS 10.5.1 keeps audit logs 12 months.
  CKV_PAYGATE_3  A bucket tagged DataClass = "audit" has Object Lock enabled.

terraform/checks/fixtures/ holds a bucket that breaks all three; tests/python/check_terraform.py
asserts that these checks fail there.
"""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

MIN_RETENTION_DAYS = 365
AUDIT_TAG = ("DataClass", "audit")


def _first(value):
    """checkov wraps every attribute value in a list; unwrap one level."""
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return value


def _default_retentions(conf):
    """The default_retention blocks of an Object Lock configuration, in either form:
    aws_s3_bucket_object_lock_configuration (rule { default_retention { ... } }) or the inline
    object_lock_configuration block of an aws_s3_bucket (AWS provider 3.x)."""
    blocks = []
    for rule in conf.get("rule") or []:
        if isinstance(rule, dict):
            for retention in rule.get("default_retention") or []:
                if isinstance(retention, dict):
                    blocks.append(retention)
    return blocks


def _lock_configurations(entity_type, conf):
    if entity_type == "aws_s3_bucket_object_lock_configuration":
        return [conf]
    return [c for c in conf.get("object_lock_configuration") or [] if isinstance(c, dict)]


def _as_number(value):
    value = _first(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


class _LockCheck(BaseResourceCheck):
    def __init__(self, name, id):
        super().__init__(
            name=name,
            id=id,
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=["aws_s3_bucket_object_lock_configuration", "aws_s3_bucket"],
        )

    def scan_resource_conf(self, conf):
        configurations = _lock_configurations(self.entity_type, conf)
        if not configurations:
            # An aws_s3_bucket without an inline lock block: CKV_PAYGATE_3 and the graph check
            # CKV2_PAYGATE_4 decide about it.
            return CheckResult.UNKNOWN
        retentions = [r for c in configurations for r in _default_retentions(c)]
        if not retentions:
            self.details.append("no default_retention: objects are written unlocked")
            return CheckResult.FAILED
        for retention in retentions:
            if not self.retention_ok(retention):
                return CheckResult.FAILED
        return CheckResult.PASSED

    def retention_ok(self, retention):
        raise NotImplementedError


class ObjectLockCompliance(_LockCheck):
    def __init__(self):
        super().__init__(
            name="Audit bucket Object Lock default retention is in COMPLIANCE mode",
            id="CKV_PAYGATE_1",
        )

    def retention_ok(self, retention):
        mode = _first(retention.get("mode"))
        if mode != "COMPLIANCE":
            self.details.append(f"mode is {mode!r}, not 'COMPLIANCE'")
            return False
        return True


class ObjectLockRetention(_LockCheck):
    def __init__(self):
        super().__init__(
            name=f"Audit bucket Object Lock default retention is at least {MIN_RETENTION_DAYS} days",
            id="CKV_PAYGATE_2",
        )

    def retention_ok(self, retention):
        days = _as_number(retention.get("days"))
        years = _as_number(retention.get("years"))
        if days is None and years is None:
            self.details.append(
                f"retention days={_first(retention.get('days'))!r} "
                f"years={_first(retention.get('years'))!r} is not a number checkov could resolve"
            )
            return False
        total = days if days is not None else years * 365
        if total < MIN_RETENTION_DAYS:
            self.details.append(f"retention is {total:g} days, under {MIN_RETENTION_DAYS}")
            return False
        return True


class AuditBucketObjectLockEnabled(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name='A bucket tagged DataClass = "audit" has Object Lock enabled',
            id="CKV_PAYGATE_3",
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=["aws_s3_bucket"],
        )

    def scan_resource_conf(self, conf):
        tags = _first(conf.get("tags")) or {}
        if not isinstance(tags, dict) or _first(tags.get(AUDIT_TAG[0])) != AUDIT_TAG[1]:
            return CheckResult.UNKNOWN
        if _first(conf.get("object_lock_enabled")) is True:
            return CheckResult.PASSED
        for inline in conf.get("object_lock_configuration") or []:
            if isinstance(inline, dict) and _first(inline.get("object_lock_enabled")) == "Enabled":
                return CheckResult.PASSED
        self.details.append("object_lock_enabled is not true")
        return CheckResult.FAILED


ObjectLockCompliance()
ObjectLockRetention()
AuditBucketObjectLockEnabled()
