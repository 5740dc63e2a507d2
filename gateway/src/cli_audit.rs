//! `paygate audit`: the auditor's commands (verify, prove, search and export, fetch) over an
//! exported archive or a gateway's write-once store; each read is itself audited.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use paygate_core::audit::{
    parse_rfc3339_ms, AuditEvent, AuditOutcome, AuditRecord, EventType, RecordProof,
};
use paygate_gateway::audit::archive;
use paygate_gateway::audit::worm::AnyWorm;
use paygate_gateway::config::Settings;
use std::path::PathBuf;

use crate::cli_identity::{operator_name, origin};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every signature, hash chain, Merkle root and the continuity of segments and
    /// checkpoints; report the first break found. Exit status 1 on a break. Several
    /// `--archive`s (one per gateway replica, each its own log) are verified together: each
    /// must verify, and no log may appear twice.
    Verify {
        #[arg(long, required = true)]
        archive: Vec<PathBuf>,
        /// The audit public key (pki/audit-signing.pub.jwk.json).
        #[arg(long)]
        public_key: PathBuf,
        /// A checkpoint kept from an earlier look: the archive must extend it (RFC 9162
        /// consistency proof), which also shows no segment was removed from the end.
        #[arg(long)]
        trusted_checkpoint: Option<PathBuf>,
        /// A copy of the witness store (`paygate audit fetch --witness`, fetched before the
        /// archive): the archive must reach and extend the witness's newest checkpoint.
        #[arg(long)]
        witness: Option<PathBuf>,
        /// The newest checkpoint must be at most this old (seconds before --as-of). The
        /// gateway seals at least once per `audit.seal_interval_ms`, idle or not, so about
        /// two intervals plus the shipping delay shows an archive whose end was removed.
        #[arg(long)]
        max_age_seconds: Option<u64>,
        /// The time the age is measured at (RFC 3339); default: now.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Write inclusion proofs (JSON) for every record of a transaction.
    Prove {
        #[arg(long)]
        archive: PathBuf,
        #[arg(long)]
        public_key: PathBuf,
        #[arg(long)]
        tx: String,
    },
    /// Check inclusion proofs written by `prove`, with the public key alone.
    VerifyProof {
        #[arg(long)]
        proof: PathBuf,
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Records matching every filter given (none: all), after verifying the archive; as JSON
    /// Lines or CSV. `export` is the same command.
    #[command(visible_alias = "export")]
    Search {
        #[arg(long)]
        archive: PathBuf,
        #[arg(long)]
        public_key: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// jsonl (the records exactly as stored) or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Copy the configured write-once store (local or S3) into a directory, for offline audit.
    Fetch {
        #[arg(long)]
        out: PathBuf,
        /// Copy the witness store (`audit.witness`) instead: its checkpoints, for
        /// `verify --witness`.
        #[arg(long)]
        witness: bool,
    },
}

#[derive(clap::Args)]
pub struct FilterArgs {
    /// From this RFC 3339 time (inclusive).
    #[arg(long)]
    from: Option<String>,
    /// Until this RFC 3339 time (exclusive).
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    wallet: Option<String>,
    #[arg(long)]
    merchant: Option<String>,
    #[arg(long)]
    tx: Option<String>,
    /// An event type, e.g. payment_decided, access_refused.
    #[arg(long)]
    event: Option<String>,
}

pub async fn run_audit(
    config: Option<PathBuf>,
    operator: Option<String>,
    command: AuditCommand,
) -> Result<()> {
    let settings = match &config {
        Some(path) => Some(Settings::load(Some(path))?),
        None => None,
    };
    let (what, target) = match &command {
        AuditCommand::Verify { archive, .. } => (
            "verify",
            archive
                .iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        AuditCommand::Prove { archive, tx, .. } => {
            ("prove", format!("{} tx {tx}", archive.display()))
        }
        AuditCommand::VerifyProof { proof, .. } => ("verify-proof", proof.display().to_string()),
        AuditCommand::Search { archive, .. } => ("search", archive.display().to_string()),
        AuditCommand::Fetch { out, .. } => ("fetch", out.display().to_string()),
    };
    if let Some(settings) = &settings {
        // 10.2.1.3: every access to the audit log is itself logged, before it happens
        let store = paygate_gateway::audit::open_store(settings, 1).await?;
        let mut event = AuditEvent::new(
            paygate_gateway::clock::now_ms(),
            EventType::AuditLogRead,
            format!("operator:{}", operator_name(operator)),
            origin(),
            AuditOutcome::Success,
            "cli",
            "audit-log",
        );
        event.detail = Some(format!("audit {what} {target}"));
        store.record_audit(&event).await?;
    }
    match command {
        AuditCommand::Verify {
            archive: dirs,
            public_key,
            trusted_checkpoint,
            witness,
            max_age_seconds,
            as_of,
        } => {
            if dirs.len() > 1 && (trusted_checkpoint.is_some() || witness.is_some()) {
                anyhow::bail!("--trusted-checkpoint and --witness belong to one log: verify that archive alone");
            }
            let as_of_ms = match &as_of {
                Some(text) => parse_rfc3339_ms(text)
                    .with_context(|| format!("--as-of {text:?} is not an RFC 3339 time"))?,
                None => paygate_gateway::clock::now_ms(),
            };
            let trusted = match trusted_checkpoint {
                Some(path) => Some(
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let mut logs = std::collections::BTreeSet::new();
            let mut records = 0;
            for dir in &dirs {
                let check = VerifyOne {
                    public_key: &public_key,
                    trusted: trusted.as_deref(),
                    witness: witness.as_deref(),
                    max_age_seconds,
                    as_of_ms,
                };
                match check.run(dir) {
                    Ok((log_id, count)) => {
                        records += count;
                        if !logs.insert(log_id.clone()) {
                            println!("BROKEN: log {log_id} appears in two archives");
                            std::process::exit(1);
                        }
                    }
                    Err(found) if dirs.len() == 1 => {
                        println!("BROKEN: {found}");
                        std::process::exit(1);
                    }
                    Err(found) => {
                        println!("BROKEN: {}: {found}", dir.display());
                        std::process::exit(1);
                    }
                }
            }
            if dirs.len() > 1 {
                println!("OK: {} logs, {records} records together", logs.len());
            }
        }
        AuditCommand::Prove {
            archive: dir,
            public_key,
            tx,
        } => {
            let (key, key_id) =
                archive::read_public_jwk(&public_key).map_err(anyhow::Error::msg)?;
            match archive::prove_tx(&dir, key, &key_id, &tx) {
                Ok(proofs) if proofs.is_empty() => bail!("no record of transaction {tx}"),
                Ok(proofs) => println!("{}", serde_json::to_string_pretty(&proofs)?),
                Err(found) => {
                    println!("BROKEN: {found}");
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::VerifyProof { proof, public_key } => {
            let (key, key_id) =
                archive::read_public_jwk(&public_key).map_err(anyhow::Error::msg)?;
            let proofs: Vec<RecordProof> = serde_json::from_slice(&std::fs::read(&proof)?)
                .context("the proof file is not a list of record proofs")?;
            if proofs.is_empty() {
                bail!("the proof file holds no proof");
            }
            for one in &proofs {
                match one.verify(&key, &key_id) {
                    Ok((record, checkpoint)) => println!(
                        "OK: record seq {} ({}) is in the log under checkpoint {} (log size {}, sealed {})",
                        record.seq,
                        record.event.as_str(),
                        checkpoint.segment,
                        checkpoint.log_size,
                        checkpoint.sealed_at
                    ),
                    Err(problem) => {
                        println!("INVALID: {problem}");
                        std::process::exit(1);
                    }
                }
            }
        }
        AuditCommand::Search {
            archive: dir,
            public_key,
            filter,
            format,
            out,
        } => {
            let (key, key_id) =
                archive::read_public_jwk(&public_key).map_err(anyhow::Error::msg)?;
            let filter = filter.into_filter()?;
            let sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::fs::File::create(path)?),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut writer = SearchWriter::new(&format, sink)?;
            let mut write_error = None;
            let result = archive::verify_archive(&dir, key, &key_id, None, out.is_some(), |at| {
                if write_error.is_none() && filter.matches(at.record) {
                    if let Err(e) = writer.write(at.record, at.line) {
                        write_error = Some(e);
                    }
                }
            });
            if let Some(error) = write_error {
                return Err(error);
            }
            writer.finish()?;
            if let Err(found) = result {
                eprintln!("BROKEN: {found}");
                std::process::exit(1);
            }
        }
        AuditCommand::Fetch { out, witness } => {
            let Some(settings) = settings else {
                bail!("fetch needs --config to know which store to read");
            };
            let copied = if witness {
                let Some(store) = AnyWorm::witness(&settings).await? else {
                    bail!("audit.witness.store is \"none\" in this configuration");
                };
                archive::fetch(&store, &out).await?
            } else {
                archive::fetch(&AnyWorm::audit_store(&settings).await?, &out).await?
            };
            println!("copied {copied} objects to {}", out.display());
        }
    }
    Ok(())
}

impl FilterArgs {
    fn into_filter(self) -> Result<archive::Filter> {
        let time = |text: Option<String>| -> Result<Option<u64>> {
            text.map(|t| {
                parse_rfc3339_ms(&t).with_context(|| format!("{t:?} is not an RFC 3339 time"))
            })
            .transpose()
        };
        Ok(archive::Filter {
            from_ms: time(self.from)?,
            to_ms: time(self.to)?,
            device: self.device,
            wallet: self.wallet,
            merchant: self.merchant,
            tx: self.tx,
            event: self
                .event
                .map(|e| EventType::parse(&e).with_context(|| format!("unknown event type {e:?}")))
                .transpose()?,
        })
    }
}

/// Writes search results as JSON Lines (the stored bytes) or CSV.
enum SearchWriter {
    Jsonl(Box<dyn std::io::Write>),
    Csv(Box<csv::Writer<Box<dyn std::io::Write>>>),
}

impl SearchWriter {
    fn new(format: &str, sink: Box<dyn std::io::Write>) -> Result<SearchWriter> {
        match format {
            "jsonl" => Ok(SearchWriter::Jsonl(sink)),
            "csv" => {
                let mut writer = csv::Writer::from_writer(sink);
                writer.write_record(archive::CSV_COLUMNS)?;
                Ok(SearchWriter::Csv(Box::new(writer)))
            }
            other => bail!("--format is jsonl or csv, not {other:?}"),
        }
    }

    fn write(&mut self, record: &AuditRecord, line: &[u8]) -> Result<()> {
        match self {
            SearchWriter::Jsonl(sink) => {
                sink.write_all(line)?;
                sink.write_all(b"\n")?;
            }
            SearchWriter::Csv(writer) => writer.write_record(archive::csv_row(record))?,
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            SearchWriter::Jsonl(mut sink) => sink.flush()?,
            SearchWriter::Csv(mut writer) => writer.flush()?,
        }
        Ok(())
    }
}

/// One archive's verification for `audit verify`.
struct VerifyOne<'a> {
    public_key: &'a std::path::Path,
    trusted: Option<&'a [u8]>,
    witness: Option<&'a std::path::Path>,
    max_age_seconds: Option<u64>,
    as_of_ms: u64,
}

impl VerifyOne<'_> {
    /// Verifies `dir` and prints what it found; returns its log id and record count.
    fn run(&self, dir: &std::path::Path) -> Result<(String, u64), String> {
        let (key, key_id) = archive::read_public_jwk(self.public_key)?;
        let broken = |found: paygate_core::audit::AuditBreak| found.to_string();
        let (verifier, summary) =
            archive::verify_archive(dir, key, &key_id, self.trusted, true, |_| {})
                .map_err(broken)?;
        let witnessed = match self.witness {
            Some(witness_dir) => {
                Some(archive::check_witness(&verifier, witness_dir).map_err(broken)?)
            }
            None => None,
        };
        if let Some(seconds) = self.max_age_seconds {
            verifier
                .check_fresh(self.as_of_ms, seconds.saturating_mul(1_000))
                .map_err(broken)?;
        }
        let log_id = verifier.log_id().unwrap_or("(no checkpoint)").to_owned();
        println!(
            "OK: {} segments, {} records, {} bytes; log root {}",
            summary.segments,
            summary.records,
            summary.bytes,
            hex::encode(summary.log_root)
        );
        println!("log {log_id} in {}", dir.display());
        if let Some(sealed_at) = verifier.newest_sealed_at_ms() {
            println!(
                "newest checkpoint sealed {} ({} s before {})",
                paygate_core::audit::rfc3339_ms(sealed_at),
                self.as_of_ms.saturating_sub(sealed_at) / 1_000,
                paygate_core::audit::rfc3339_ms(self.as_of_ms)
            );
        }
        if let Some(newest) = witnessed {
            println!("witness: reaches and extends its newest checkpoint ({newest})");
        }
        Ok((log_id, summary.records))
    }
}
