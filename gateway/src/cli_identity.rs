//! Who ran a CLI command, as the audit trail records it, and the record of what it changed.

use anyhow::Result;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_gateway::config::Settings;

/// The local bootstrap mode writes the database directly, so only while no gateway serves on
/// this data directory; afterwards the operator API (`--api`) is the way, with its checks.
pub fn local_bootstrap(settings: &Settings) -> Result<()> {
    if paygate_gateway::audit::journal_in_use(settings)? {
        anyhow::bail!(
            "a gateway serves on this data directory: go through its operator API (--api https://host:port --token-file F); the local mode is for the first operator, before any gateway serves"
        );
    }
    Ok(())
}

/// Who ran this command, as the audit trail records it: the OS account the kernel says runs
/// this process (never `$USER`, which anyone sets), after the name the caller gave, if any.
pub fn operator_name(claimed: Option<String>) -> String {
    let account = os_account();
    match claimed {
        Some(claimed) => format!("{claimed} as {account}"),
        None => account,
    }
}

/// The process's user: the owner of `/proc/self` (its effective uid), named from /etc/passwd.
fn os_account() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "os-user-unknown".to_owned();
    };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let uid_field = fields.nth(1)?;
                (uid_field.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        });
    match name {
        Some(name) => format!("{name}(uid {uid})"),
        None => format!("uid {uid}"),
    }
}

pub fn origin() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("cli:{}", host.trim())
}

/// Records an operator's action in the audit outbox (PCI DSS 10.2.1.2, .5, .7); the running
/// gateway journals it within a second, or the next one at its start.
pub async fn admin_event(
    settings: &Settings,
    event_type: EventType,
    resource: &str,
    detail: &str,
) -> Result<()> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let store = paygate_gateway::audit::open_store(settings, 1).await?;
    let mut event = AuditEvent::new(
        paygate_gateway::clock::now_ms(),
        event_type,
        format!("operator:{}", operator_name(None)),
        origin(),
        AuditOutcome::Success,
        "cli",
        resource,
    );
    event.detail = Some(detail.to_owned());
    store.record_audit(&event).await?;
    Ok(())
}
