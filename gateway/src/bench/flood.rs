//! The flood scenario (`paygate bench --flood`): one terminal sends far beyond its admission
//! limits while the others pay one payment at a time. The others' latency is measured before,
//! during and after the flood against the same gateway, and reported as ratios of the
//! "before" figure; the gateway's memory after each phase too.

use super::loadgen::{self, Load, Mode, Outcomes, Replies};
use super::{clone_bundle, setup, BenchOptions, Row};
use crate::config::MqttSettings;
use anyhow::{Context, Result};
use paygate_core::{AccountId, Money};
use std::fmt::Write as _;
use std::time::Duration;

/// What the flooding terminal offers, per second (the default admission allows 100).
pub const FLOOD_RATE_PER_S: u64 = 5_000;

pub async fn flood_rows(options: &BenchOptions) -> Result<Vec<Row>> {
    let dir = setup::fresh_dir(&options.dir, "flood")?;
    let port = setup::free_port()?;
    let mut settings = setup::gateway_settings(&dir, None, port);
    // the bench opens the admission limits for its load; this scenario is about them
    let defaults = MqttSettings::default();
    settings.mqtt.device_requests_per_s = defaults.device_requests_per_s;
    settings.mqtt.device_requests_burst = defaults.device_requests_burst;
    settings.mqtt.device_inflight_max = defaults.device_inflight_max;
    let calm_count = options.terminals.clamp(2, 50);
    eprintln!("bench: flood: making {} terminals", calm_count + 1);
    let bundles = setup::terminals(&settings, calm_count + 1, "flood-pos").await?;
    let gateway = setup::GatewayProcess::start(&settings).await?;
    let calm_load = |phase: u64, duration: Duration| -> Result<Load> {
        Ok(Load {
            host: "127.0.0.1".into(),
            port: gateway.port,
            bundles: bundles[1..]
                .iter()
                .map(clone_bundle)
                .collect::<Result<_>>()?,
            merchant: AccountId::parse(setup::MERCHANT)?,
            amount: Money::parse_decimal("1.00", "INR")?,
            mode: Mode::Closed { inflight: 1 },
            replies: Replies::Receipts,
            warmup: Duration::from_secs(1),
            duration,
            counter_base: phase * 100_000_000,
        })
    };
    let phase = options.duration;
    eprintln!("bench: flood: {calm_count} terminals paying one at a time, before the flood");
    let before = loadgen::run(calm_load(1, phase)?).await?;
    let (rss_before, _) = gateway.rss()?;
    eprintln!("bench: flood: during a flood of {FLOOD_RATE_PER_S}/s from one terminal");
    let flood = Load {
        bundles: vec![clone_bundle(&bundles[0])?],
        mode: Mode::Open {
            rate_per_s: FLOOD_RATE_PER_S,
        },
        // the flood covers the calm load's warm-up and measured window
        warmup: Duration::ZERO,
        duration: phase + Duration::from_secs(1),
        ..calm_load(2, phase)?
    };
    let flood_task = tokio::spawn(loadgen::run(flood));
    let during = loadgen::run(calm_load(3, phase)?).await?;
    let flooded = flood_task.await.context("flood task")??;
    let (rss_during, _) = gateway.rss()?;
    eprintln!("bench: flood: after the flood");
    let after = loadgen::run(calm_load(4, phase)?).await?;
    let (rss_after, _) = gateway.rss()?;
    gateway.stop().await;

    let p99 = |o: &Outcomes| o.percentile_ms(990);
    let ratio = |o: &Outcomes| p99(o) / p99(&before).max(1e-3);
    let mut rows = Vec::new();
    for (name, outcomes, rss, extra) in [
        ("flood: the others, before", before.clone(), rss_before, String::new()),
        (
            "flood: the others, during",
            during.clone(),
            rss_during,
            format!(
                "p99 {:.2}x before; the flooding terminal: {} sent in the window, {} approved, {} refused (OVERLOADED)",
                ratio(&during),
                flooded.sent + flooded.unanswered,
                flooded.approved,
                flooded.other
            ),
        ),
        (
            "flood: the others, after",
            after.clone(),
            rss_after,
            format!("p99 {:.2}x before", ratio(&after)),
        ),
    ] {
        let mut note = format!("{} unanswered, {} not approved", outcomes.unanswered, outcomes.other);
        if !extra.is_empty() {
            let _ = write!(note, "; {extra}");
        }
        rows.push(Row {
            name: name.into(),
            outcomes: Some(outcomes),
            cpu_cores: None,
            load_cpu_cores: None,
            rss_bytes: Some(rss),
            note,
        });
    }
    Ok(rows)
}
