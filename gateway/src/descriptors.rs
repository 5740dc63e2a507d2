//! File descriptors against `mqtt.connections_max`, checked before anything listens.
//!
//! Each device connection holds three descriptors: its TLS socket, the front's socket to the
//! embedded broker and the broker's end of it. A gateway whose limit is below what its
//! configured connections need would run out under load, where an accept loop, the database
//! and the audit journal all fail at once; so the soft limit is raised to what is needed (up
//! to the hard limit), and if the hard limit is too low the gateway refuses to start, saying
//! which of the two to change.

use anyhow::{bail, Context, Result};
use rlimit::Resource;

/// Descriptors one device connection holds.
pub const PER_CONNECTION: u64 = 3;
/// Descriptors for everything else: the database and its WAL, the audit journal, listeners,
/// the runtime, the HTTP clients of the key provider and the object store.
pub const RESERVED: u64 = 256;

/// What `connections_max` connections need.
pub fn needed(connections_max: usize) -> u64 {
    u64::try_from(connections_max)
        .unwrap_or(u64::MAX)
        .saturating_mul(PER_CONNECTION)
        .saturating_add(RESERVED)
}

/// The connections the hard limit leaves room for (for tools that start a gateway of their
/// own, such as the bench, sized to the machine rather than refused by it).
pub fn connections_that_fit() -> usize {
    let hard = Resource::NOFILE.get().map_or(1024, |(_, hard)| hard);
    usize::try_from(hard.saturating_sub(RESERVED) / PER_CONNECTION).unwrap_or(usize::MAX)
}

/// Makes sure the process may open the descriptors `connections_max` connections need,
/// raising the soft limit if it must. Returns the soft limit in force.
pub fn ensure(connections_max: usize) -> Result<u64> {
    let needed = needed(connections_max);
    let (soft, hard) = Resource::NOFILE
        .get()
        .context("reading the file descriptor limit")?;
    if soft >= needed {
        return Ok(soft);
    }
    let mut why = format!("the hard limit is {hard}");
    if hard >= needed {
        match Resource::NOFILE.set(needed, hard) {
            Ok(()) => {
                tracing::info!(
                    from = soft,
                    to = needed,
                    "file descriptor soft limit raised"
                );
                return Ok(needed);
            }
            // e.g. above the kernel's fs.nr_open, under an unlimited hard limit
            Err(error) => why = format!("raising the soft limit failed: {error}"),
        }
    }
    let fits = hard.min(1 << 20).saturating_sub(RESERVED) / PER_CONNECTION;
    bail!(
        "mqtt.connections_max = {connections_max} needs {needed} file descriptors \
         ({PER_CONNECTION} per connection and {RESERVED} more) but {why}: raise the limit \
         (ulimit -Hn, systemd LimitNOFILE=, the container's nofile ulimit) or set \
         mqtt.connections_max to {fits} or less"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_too_low_is_refused_with_the_way_out() {
        let (_, hard) = Resource::NOFILE.get().expect("readable");
        let too_many = usize::try_from(hard / PER_CONNECTION + 1).unwrap_or(usize::MAX);
        let error = ensure(too_many)
            .expect_err("beyond the hard limit")
            .to_string();
        assert!(error.contains("file descriptors"), "{error}");
        assert!(error.contains("mqtt.connections_max to"), "{error}");
        // a few connections fit any machine this runs on
        let fits = usize::try_from(hard.saturating_sub(RESERVED) / PER_CONNECTION / 2)
            .unwrap_or(usize::MAX)
            .clamp(1, 1000);
        let soft = ensure(fits).expect("within the hard limit");
        assert!(soft >= needed(fits));
        assert!(Resource::NOFILE.get().expect("readable").0 >= needed(fits));
    }
}
