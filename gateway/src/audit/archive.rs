//! The auditor's side: reading an exported archive (a directory with `segments/` and
//! `checkpoints/`, as the write-once stores hold it) with the audit public key alone.
//! `paygate audit verify | prove | search | export` are thin glue over these functions.

use super::worm::{WormError, WormStore};
use paygate_core::audit::{
    checkpoint_name, parse_rfc3339_ms, segment_name, ArchiveSummary, ArchiveVerifier, AuditBreak,
    AuditRecord, BreakKind, EventType, RecordProof,
};
use paygate_core::envelope::{SigningAlgorithm, VerifyingKey};
use std::collections::BTreeSet;
use std::path::Path;

/// The audit public key and its key id, read from the JWK the gateway publishes.
pub fn read_public_jwk(path: &Path) -> Result<(VerifyingKey, String), String> {
    use base64::Engine;
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let jwk: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    if field("kty") != "OKP" || field("crv") != "Ed25519" {
        return Err(format!("{}: not an Ed25519 OKP key", path.display()));
    }
    let public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(field("x"))
        .map_err(|_| format!("{}: x is not base64url", path.display()))?;
    if public_key.len() != 32 {
        return Err(format!("{}: x is not 32 bytes", path.display()));
    }
    Ok((
        VerifyingKey {
            algorithm: SigningAlgorithm::Ed25519,
            public_key,
        },
        field("kid").to_owned(),
    ))
}

fn numbers_in(dir: &Path, suffix: &str) -> std::io::Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse().ok())
        {
            out.insert(n);
        }
    }
    Ok(out)
}

/// A record found while verifying, with where it is.
pub struct Located<'a> {
    pub segment: u64,
    pub index: u64,
    pub record: &'a AuditRecord,
    pub line: &'a [u8],
}

/// Verifies a whole archive in order; calls `on_record` for every record of every segment
/// that verified. Returns the verifier (for proofs) and the summary, or the first break.
pub fn verify_archive(
    dir: &Path,
    key: VerifyingKey,
    key_id: &str,
    trusted_checkpoint: Option<&[u8]>,
    show_progress: bool,
    mut on_record: impl FnMut(Located<'_>),
) -> Result<(ArchiveVerifier, ArchiveSummary), AuditBreak> {
    let io_break = |location: String, e: std::io::Error| AuditBreak {
        kind: BreakKind::SegmentMissing,
        location,
        message: e.to_string(),
    };
    let checkpoints = numbers_in(&dir.join("checkpoints"), ".cose")
        .map_err(|e| io_break("checkpoints/".into(), e))?;
    let segments =
        numbers_in(&dir.join("segments"), ".jsonl").map_err(|e| io_break("segments/".into(), e))?;
    let total_bytes: u64 = segments
        .iter()
        .filter_map(|n| std::fs::metadata(dir.join(segment_name(*n))).ok())
        .map(|m| m.len())
        .sum();
    let progress = if show_progress {
        indicatif::ProgressBar::new(total_bytes)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} verifying [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut verifier = ArchiveVerifier::new(key, key_id);
    let mut bytes_read = 0u64;
    for &number in &checkpoints {
        let segment_bytes =
            std::fs::read(dir.join(segment_name(number))).map_err(|e| AuditBreak {
                kind: BreakKind::SegmentMissing,
                location: segment_name(number),
                message: format!("the segment of checkpoint {number} cannot be read: {e}"),
            })?;
        let checkpoint_bytes = std::fs::read(dir.join(checkpoint_name(number)))
            .map_err(|e| io_break(checkpoint_name(number), e))?;
        verifier.add_segment(
            number,
            &segment_bytes,
            &checkpoint_bytes,
            |index, record, line| {
                on_record(Located {
                    segment: number,
                    index,
                    record,
                    line,
                })
            },
        )?;
        bytes_read += u64::try_from(segment_bytes.len()).unwrap_or(u64::MAX);
        progress.set_position(bytes_read);
    }
    progress.finish_and_clear();
    if let Some(unsealed) = segments.iter().find(|n| !checkpoints.contains(n)) {
        return Err(AuditBreak {
            kind: BreakKind::SegmentMissing,
            location: checkpoint_name(*unsealed),
            message: format!(
                "segment {unsealed} has no checkpoint: its checkpoint was removed, or it was never sealed"
            ),
        });
    }
    if let Some(trusted) = trusted_checkpoint {
        verifier.check_trusted(trusted)?;
    }
    let summary = verifier.summary(bytes_read);
    Ok((verifier, summary))
}

/// Checks a verified archive against a copy of the witness store (`paygate audit fetch
/// --witness`): the witness's newest checkpoint must verify under the audit key and the
/// archive must reach and extend it (the consistency proof of
/// [`ArchiveVerifier::check_trusted`]). A witness that holds a checkpoint the archive lacks
/// shows that the archive was cut short. Fetch the witness before the archive: the shipper
/// writes a checkpoint to the audit store before it writes it to the witness.
pub fn check_witness(verifier: &ArchiveVerifier, witness_dir: &Path) -> Result<u64, AuditBreak> {
    let numbers =
        numbers_in(&witness_dir.join("checkpoints"), ".cose").map_err(|e| AuditBreak {
            kind: BreakKind::TrustedCheckpoint,
            location: format!("witness {}", witness_dir.display()),
            message: e.to_string(),
        })?;
    let Some(&newest) = numbers.last() else {
        return Err(AuditBreak {
            kind: BreakKind::TrustedCheckpoint,
            location: format!("witness {}", witness_dir.display()),
            message: "the witness holds no checkpoint".into(),
        });
    };
    let name = checkpoint_name(newest);
    let bytes = std::fs::read(witness_dir.join(&name)).map_err(|e| AuditBreak {
        kind: BreakKind::TrustedCheckpoint,
        location: format!("witness {name}"),
        message: e.to_string(),
    })?;
    verifier.check_trusted(&bytes).map_err(|mut found| {
        found.location = format!("witness {name}");
        found
    })?;
    Ok(newest)
}

/// Inclusion proofs for every record of a transaction, against the newest checkpoint.
pub fn prove_tx(
    dir: &Path,
    key: VerifyingKey,
    key_id: &str,
    tx_id: &str,
) -> Result<Vec<RecordProof>, AuditBreak> {
    let mut found = Vec::new();
    let (verifier, _) = verify_archive(dir, key, key_id, None, false, |at| {
        if at.record.tx_id.as_deref() == Some(tx_id) {
            found.push((at.segment, at.index));
        }
    })?;
    let mut proofs = Vec::new();
    for (segment, index) in found {
        let bytes = std::fs::read(dir.join(segment_name(segment))).unwrap_or_default();
        let lines: Vec<&[u8]> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(proof) = verifier.prove(segment, index, &lines) {
            proofs.push(proof);
        }
    }
    Ok(proofs)
}

/// What `search` and `export` select. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub device: Option<String>,
    pub wallet: Option<String>,
    pub merchant: Option<String>,
    pub event: Option<EventType>,
    pub tx: Option<String>,
}

impl Filter {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let time = parse_rfc3339_ms(&record.time).unwrap_or(0);
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.from_ms.is_none_or(|from| time >= from)
            && self.to_ms.is_none_or(|to| time < to)
            && same(&self.device, &record.device_id)
            && same(&self.wallet, &record.wallet_id)
            && same(&self.merchant, &record.merchant_id)
            && same(&self.tx, &record.tx_id)
            && self.event.is_none_or(|e| e == record.event)
    }
}

/// The CSV columns of `export --format csv`, in order.
pub const CSV_COLUMNS: [&str; 17] = [
    "seq",
    "time",
    "event",
    "actor",
    "origin",
    "outcome",
    "component",
    "resource",
    "code",
    "tx_id",
    "device_id",
    "wallet_id",
    "merchant_id",
    "amount",
    "detail",
    "outbox_id",
    "prev",
];

pub fn csv_row(record: &AuditRecord) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        record.seq.to_string(),
        record.time.clone(),
        record.event.as_str().to_owned(),
        record.actor.clone(),
        record.origin.clone(),
        match record.outcome {
            paygate_core::audit::AuditOutcome::Success => "success".into(),
            paygate_core::audit::AuditOutcome::Failure => "failure".into(),
        },
        record.component.clone(),
        record.resource.clone(),
        opt(&record.code),
        opt(&record.tx_id),
        opt(&record.device_id),
        opt(&record.wallet_id),
        opt(&record.merchant_id),
        opt(&record.amount),
        opt(&record.detail),
        record.outbox_id.map(|v| v.to_string()).unwrap_or_default(),
        record.prev.clone(),
    ]
}

/// Copies every segment and checkpoint from a write-once store into a local directory, so an
/// auditor can work offline.
pub async fn fetch<S: WormStore>(store: &S, out: &Path) -> Result<u64, WormError> {
    copy_objects(store, out, false).await
}

/// Brings a local copy up to date with a write-once store: copies only the objects the copy
/// lacks (objects never change once stored). Returns how many were copied.
pub async fn sync<S: WormStore>(store: &S, out: &Path) -> Result<u64, WormError> {
    copy_objects(store, out, true).await
}

/// Copies the store's segments and checkpoints into `out`, each written whole before it is
/// named; with `only_missing`, objects already there are left as they are.
async fn copy_objects<S: WormStore>(
    store: &S,
    out: &Path,
    only_missing: bool,
) -> Result<u64, WormError> {
    let mut copied = 0;
    for prefix in ["segments/", "checkpoints/"] {
        std::fs::create_dir_all(out.join(prefix))?;
        for key in store.list(prefix).await? {
            let target = out.join(&key);
            if only_missing && target.exists() {
                continue;
            }
            if let Some(bytes) = store.get(&key).await? {
                let partial = out.join(format!("{key}.partial"));
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, &target)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}
